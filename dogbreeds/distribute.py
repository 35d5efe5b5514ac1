"""The machine, under either Keras backend: its devices as one data-parallel whole, the precision
that suits them, several processes joined into one training, and its failures (out of memory,
Ctrl-C) said as one line. Everything that differs between TensorFlow and JAX lives here.

`auto` takes a TPU when there is one, all GPUs when there are several, and otherwise one device.
Under TensorFlow that is a `tf.distribute` strategy; under JAX (`KERAS_BACKEND=jax`) it is
`keras.distribution.DataParallel` over the devices of every process, which is also how Keras
trains on several machines. Either way `--batch-size` is per replica: the global batch is that
times the replicas, and the learning rate follows the global batch (the linear scaling rule), so
one replica or eight learn at the same pace per epoch.

The input stays tf.data under both backends (Keras feeds a tf.data.Dataset to JAX as arrays).
"""

from __future__ import annotations

import functools
import glob
import logging
import os
import sys
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from dogbreeds.errors import DogbreedsError, Interrupted, from_environment, log
from dogbreeds.settings import STRATEGIES, Cluster

CPU_DEVICES_VARIABLE = "DOGBREEDS_CPU_DEVICES"  # split the CPU into N logical devices: replicas without GPUs
JAX = keras.backend.backend() == "jax"


def backend() -> str:
    return keras.backend.backend()


def split_cpu(devices: int) -> None:
    """N logical CPU devices, so that data-parallel training can be run and tested on any machine."""
    if JAX:
        import jax

        try:
            jax.config.update("jax_num_cpu_devices", devices)
        except RuntimeError:  # JAX set up its devices already
            if len(jax.local_devices(backend="cpu")) != devices:
                raise DogbreedsError(
                    f"${CPU_DEVICES_VARIABLE}={devices} came after JAX set up its devices; "
                    "set it before the process starts"
                ) from None
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * devices)
    except RuntimeError:  # devices already initialised: done before, or too late
        if len(tf.config.list_logical_devices("CPU")) != devices:
            raise DogbreedsError(
                f"${CPU_DEVICES_VARIABLE}={devices} came after TensorFlow set up its devices; "
                "set it before the process starts"
            ) from None


def tpu_machine() -> bool:
    """Whether this is a TPU VM: its chips appear as /dev/accel* (v2-v4) or /dev/vfio/N (v5 and later)."""
    return bool(os.environ.get("TPU_NAME") or glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


JAX_ON_TPU = (
    "this is a TPU machine, where TensorFlow has no TPU (Kaggle installs tensorflow-cpu beside jax[tpu]): "
    "set KERAS_BACKEND=jax before running dogbreeds"
)


def _tpu_resolver(required: bool):
    """A connected TPU cluster resolver, or None when this machine has no TPU."""
    name = os.environ.get("TPU_NAME") or ("local" if tpu_machine() else "")
    if not name and not required:
        return None
    try:
        return tf.distribute.cluster_resolver.TPUClusterResolver.connect(tpu=name or "local")
    except (ValueError, RuntimeError, tf.errors.OpError) as error:
        if tpu_machine() and not os.environ.get("KERAS_BACKEND"):
            if required:
                raise DogbreedsError(JAX_ON_TPU) from None
            log.warning(JAX_ON_TPU)
            return None
        if required:
            raise DogbreedsError(
                f"--strategy tpu: no TPU could be reached ({str(error).splitlines()[0][:120]}); "
                "run on a TPU machine (set $TPU_NAME for a remote one) or pass --strategy auto"
            ) from None
        log.warning(f"a TPU seemed present but could not be reached ({error}); going on without it")
        return None


def join(cluster: Cluster) -> None:
    """Join the other processes (jax.distributed.initialize) before anything touches a device;
    a machine that sets the standard variables itself needs no options."""
    standard = any(os.environ.get(v) for v in ("JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES"))
    if not cluster.given and not (JAX and standard and "," in os.environ.get("TPU_WORKER_HOSTNAMES", ",")):
        return
    if not JAX:
        raise DogbreedsError(
            "several processes train one model under the JAX backend only (TensorFlow's multi-worker training "
            "is a prototype in Keras 3): set KERAS_BACKEND=jax and install dogbreeds[jax]"
        )
    import jax

    if jax.distributed.is_initialized():
        return
    try:
        jax.distributed.initialize(cluster.coordinator, cluster.processes, cluster.process_id)
    except (RuntimeError, ValueError) as error:
        raise DogbreedsError(
            f"could not join the other processes at {cluster.coordinator or 'the address the machine gives'} "
            f"({str(error).splitlines()[0][:160]}); start process 0 first, with the same --coordinator"
        ) from None
    if jax.process_index() > 0:  # process 0 speaks for all: the others say only what goes wrong
        log.setLevel(logging.WARNING)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the rest of the process)


def process_index() -> int:
    """This process's number among those training one model: 0, the one that writes and prints."""
    if not JAX:
        return 0
    import jax

    return jax.process_index()


def process_count() -> int:
    if not JAX:
        return 1
    import jax

    return jax.process_count()


DIFFERENT_PROCESSES = (
    "the processes hold different weights; start every one with the same dogbreeds, data and options "
    "(all but --process-id)"
)


def check_same_weights(model: keras.Model) -> None:
    """Across processes: every one ends with the same weights (their sums compared), or training
    fails with a line saying so, rather than a run that only process 0's half of the data made."""
    if process_count() == 1:
        return
    from jax.experimental import multihost_utils

    sums = np.array([np.abs(keras.ops.convert_to_numpy(w)).sum(dtype=np.float64) for w in model.weights])
    sums = sums.astype(np.float32)  # what JAX gathers without x64: float64 would not compare equal to it
    try:
        multihost_utils.assert_equal(sums, "weights differ")
    except AssertionError:
        raise DogbreedsError(DIFFERENT_PROCESSES) from None


@dataclass
class JaxDevices:
    """Under JAX, what a tf.distribute strategy is to the rest of the package: `scope()` to build
    and train in, `num_replicas_in_sync`. Several devices (of one process or many) train
    data-parallel: keras.distribution.DataParallel replicates the variables and splits each batch."""

    devices: list
    data_parallel: bool

    def __post_init__(self):
        self.distribution = keras.distribution.DataParallel(devices=self.devices) if self.data_parallel else None
        if self.distribution:  # each process reads its own rows (pipeline.Loader.shard), not all of them
            self.distribution.auto_shard_dataset = False

    @property
    def num_replicas_in_sync(self) -> int:
        return len(self.devices)

    @property
    def platform(self) -> str:
        return self.devices[0].platform

    @contextmanager
    def scope(self):
        """The distribution in effect; across processes JAX checks that each puts the same values on
        the devices (the first weights): one started with other options or data fails in one line."""
        try:
            with self.distribution.scope() if self.distribution else nullcontext():
                yield
        except AssertionError as error:
            if "is not the same on each process" not in str(error):
                raise
            raise DogbreedsError(DIFFERENT_PROCESSES) from None


def static_shapes(strategy) -> bool:
    """Whether every batch must be whole (training drops its last part; predictions pad theirs):
    a TPU compiles each shape anew, and processes must take equal steps, or they wait forever."""
    return isinstance(strategy, JaxDevices) and (strategy.platform == "tpu" or process_count() > 1)


def plan_devices(name: str, devices: list, processes: int = 1) -> tuple[list, bool]:
    """The devices that train, and whether data-parallel, for --strategy `name` under JAX, given
    every process's devices (all of one platform, accelerators first, as jax.devices() lists
    them): a pure function, so the TPU rules are tested with a made-up device list."""
    platform = devices[0].platform
    if name == "tpu" and platform != "tpu":
        raise DogbreedsError(
            f"--strategy tpu: JAX finds no TPU, only {platform} devices; run on a TPU VM or pass --strategy auto"
        )
    if name == "default":
        if processes > 1:
            raise DogbreedsError(f"--strategy default trains on one device; {processes} processes need auto")
        return devices[:1], False
    if name == "mirrored" or processes > 1 or (name in ("auto", "tpu") and platform != "cpu" and len(devices) > 1):
        return devices, len(devices) > 1
    return devices[:1], False


@functools.cache
def make_strategy(name: str = "auto"):
    """The strategy called `name` (see STRATEGIES): a tf.distribute strategy, or under JAX the
    devices that train (`JaxDevices`); call it before the backend touches a device.

    One per process: a TPU is initialised once, and a second mirrored strategy in the same
    process would mix up its collective operations with the first's.
    """
    if name not in STRATEGIES:
        raise DogbreedsError(f"unknown --strategy {name!r}; choose one of: {', '.join(STRATEGIES)}")
    if os.environ.get(CPU_DEVICES_VARIABLE):
        split_cpu(int(os.environ[CPU_DEVICES_VARIABLE]))
    if JAX:
        import jax

        return JaxDevices(*plan_devices(name, jax.devices(), jax.process_count()))
    if name in ("auto", "tpu"):
        resolver = _tpu_resolver(required=name == "tpu")
        if resolver is not None:
            return tf.distribute.TPUStrategy(resolver)
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        # Without GPUs, mirror over the (logical) CPU devices; with one device this is one replica.
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    return tf.distribute.get_strategy()


def current():
    """The strategy in effect where none was made: the default one."""
    if JAX:
        import jax

        return JaxDevices(jax.local_devices()[:1], False)
    return tf.distribute.get_strategy()


def describe(strategy) -> str:
    replicas = strategy.num_replicas_in_sync
    if isinstance(strategy, JaxDevices):
        name = "DataParallel" if strategy.distribution else "OneDevice"
    else:
        name = type(strategy).__name__.lstrip("_").replace("DistributionStrategy", "Strategy")
    return f"{name}, {replicas} replica{'s' * (replicas > 1)}"


def machine(strategy) -> str:
    """One line: the backend, the devices that train and the processes (train's first line)."""
    if isinstance(strategy, JaxDevices):
        import jax

        kind, version = strategy.platform, f"JAX {jax.__version__}"
    else:
        tpu = isinstance(strategy, tf.distribute.TPUStrategy)
        kind, version = "tpu" if tpu else _one_device(), f"TensorFlow {tf.__version__}"
    processes = process_count()
    return (
        f"backend: {version} (Keras {keras.__version__}); devices: {strategy.num_replicas_in_sync} {kind} "
        f"({describe(strategy)}); processes: {processes}" + (f", this is {process_index()}" if processes > 1 else "")
    )


def _one_device() -> str:
    return "gpu" if tf.config.list_logical_devices("GPU") else "cpu"


FAST_HALF_PRECISION = (7, 0)  # Volta and later have Tensor Cores; TensorFlow's mixed-precision guide advises them


def auto_precision(tpu: bool, gpus: list[tuple[str, tuple[int, int] | None]]) -> tuple[str, str]:
    """What `--precision auto` picks for these devices, and why: (policy, reason).

    `gpus` are (name, compute capability). float16 pays only where Tensor Cores do the
    arithmetic (compute capability 7.0 and above: T4, V100, A100...); on older GPUs, such as
    Kaggle's P100 (6.0), it is slower or no faster than float32.
    """
    if tpu:
        return "mixed_bfloat16", "a TPU computes in bfloat16"
    if not gpus:
        return "float32", "no GPU"
    name, capability = gpus[0]
    if capability is not None and tuple(capability) >= FAST_HALF_PRECISION:
        return "mixed_float16", f"{name} has compute capability {capability[0]}.{capability[1]} (Tensor Cores)"
    shown = f"{capability[0]}.{capability[1]}" if capability else "unknown"
    return "float32", f"{name} has compute capability {shown}, below 7.0: float16 would not be faster"


def _has_tpu() -> bool:
    if JAX:
        import jax

        return jax.devices()[0].platform == "tpu"
    return bool(tf.config.list_logical_devices("TPU"))


def _gpus() -> list[tuple[str, tuple[int, int] | None]]:
    if JAX:
        import jax

        gpus = [d for d in jax.devices() if d.platform == "gpu"]
        capability = [getattr(d, "compute_capability", None) for d in gpus]  # "9.0", or None where unknown
        return [(d.device_kind, tuple(map(int, c.split("."))) if c else None) for d, c in zip(gpus, capability)]
    found = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        found.append((details.get("device_name", gpu.name), details.get("compute_capability")))
    return found


def use_precision(precision: str, *, quiet: bool = False) -> str:
    """Set Keras' global policy and return it; `auto` decides by device (`auto_precision`) and,
    unless `quiet` (whose standard output may be JSON), says why."""
    if precision == "auto":
        precision, reason = auto_precision(_has_tpu(), _gpus())
        if not quiet:
            log.info(f"precision: {precision} ({reason})")
    on_cpu = not _has_tpu() and not _gpus()
    if precision == "mixed_bfloat16" and on_cpu and not cpu_has_bf16():
        log.warning(
            "this CPU has no bfloat16 instructions (avx512_bf16, amx_bf16): mixed_bfloat16 is emulated and many "
            "times slower here; use --precision float32"
        )
    keras.mixed_precision.set_global_policy(precision)
    return precision


def cpu_has_bf16() -> bool:
    """Whether the CPU computes bfloat16 itself (x86: AVX512-BF16 or AMX; others: assumed so)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:  # macOS and others: nothing to read, nothing said
        return True
    if "flags" not in info:  # not x86
        return True
    return any(flag in info.split() for flag in ("avx512_bf16", "amx_bf16"))


@contextmanager
def user_facing_failures(batch_size: int, resume_hint: str = ""):
    """Ctrl-C, SIGTERM and out-of-memory become one line that says how to go on."""
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted{resume_hint}") from None
    except OSError as error:  # a full disk while saving an epoch
        found = from_environment(error, resume_hint.removeprefix("; ") or "then run the command again")
        if found is None:
            raise
        raise found from None
    except Exception as error:
        if not _out_of_memory(error):
            raise
        raise DogbreedsError(
            f"out of memory at --batch-size {batch_size}: try --batch-size {max(1, batch_size // 2)} "
            f"or a smaller --image-size{resume_hint}"
        ) from None


def _out_of_memory(error: Exception) -> bool:
    """TensorFlow raises ResourceExhaustedError; JAX an XlaRuntimeError whose message starts so."""
    return isinstance(error, tf.errors.ResourceExhaustedError) or (
        type(error).__name__ in ("XlaRuntimeError", "JaxRuntimeError") and "RESOURCE_EXHAUSTED" in str(error)
    )


def gradients(model: keras.Model, inputs: list, by, score) -> tuple[list, list]:
    """The model's outputs on `inputs` (not training) and the gradients of `score(outputs)`, a
    scalar, by the inputs at the positions `by`: TensorFlow records its tape; JAX differentiates
    the model as a function of its inputs and variables (`stateless_call`)."""
    backend = keras.backend.backend()
    by = list(by)
    if JAX:
        import jax

        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]

        def scored(chosen):
            given = list(inputs)
            for i, x in zip(by, chosen):
                given[i] = x
            outputs, _ = model.stateless_call(trainable, non_trainable, given, training=False)
            return score(outputs), outputs

        found, outputs = jax.grad(scored, has_aux=True)([inputs[i] for i in by])
        return outputs, found
    if backend == "tensorflow":
        watched = [inputs[i] for i in by]
        with tf.GradientTape() as tape:
            tape.watch(watched)
            outputs = model(inputs, training=False)
            value = score(outputs)
        return outputs, tape.gradient(value, watched)
    raise DogbreedsError(
        f"Grad-CAM runs under Keras' tensorflow and jax backends, not {backend}: set KERAS_BACKEND=tensorflow or jax"
    )
