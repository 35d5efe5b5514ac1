"""The machine: one tf.distribute strategy for its accelerators, the precision that suits them,
and its failures (out of memory, Ctrl-C) said as one line.

`auto` takes a TPU when there is one, all GPUs when there are several, and otherwise the
default strategy (one device). Under a strategy `--batch-size` is per replica: the global
batch is that times the replicas, and the learning rate follows the global batch (the
linear scaling rule), so one replica or eight learn at the same pace per epoch.
"""

from __future__ import annotations

import functools
import glob
import os
from contextlib import contextmanager
from pathlib import Path

import keras
import tensorflow as tf

from dogbreeds.errors import DogbreedsError, Interrupted, from_environment, log
from dogbreeds.settings import STRATEGIES

CPU_DEVICES_VARIABLE = "DOGBREEDS_CPU_DEVICES"  # split the CPU into N logical devices: replicas without GPUs


def split_cpu(devices: int) -> None:
    """N logical CPU devices, so that mirrored training can be run and tested on any machine."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * devices)
    except RuntimeError:  # devices already initialised: done before, or too late
        if len(tf.config.list_logical_devices("CPU")) != devices:
            raise DogbreedsError(
                f"${CPU_DEVICES_VARIABLE}={devices} came after TensorFlow set up its devices; "
                "set it before the process starts"
            ) from None


def _tpu_resolver(required: bool):
    """A connected TPU cluster resolver, or None when this machine has no TPU."""
    name = os.environ.get("TPU_NAME") or ("local" if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*") else "")
    if not name and not required:
        return None
    try:
        return tf.distribute.cluster_resolver.TPUClusterResolver.connect(tpu=name or "local")
    except (ValueError, RuntimeError, tf.errors.OpError) as error:
        if required:
            raise DogbreedsError(
                f"--strategy tpu: no TPU could be reached ({str(error).splitlines()[0][:120]}); "
                "run on a TPU machine (set $TPU_NAME for a remote one) or pass --strategy auto"
            ) from None
        log.warning(f"a TPU seemed present but could not be reached ({error}); going on without it")
        return None


@functools.cache
def make_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """The strategy called `name` (see STRATEGIES); call it before TensorFlow touches a device.

    One per process: a TPU is initialised once, and a second mirrored strategy in the same
    process would mix up its collective operations with the first's.
    """
    if name not in STRATEGIES:
        raise DogbreedsError(f"unknown --strategy {name!r}; choose one of: {', '.join(STRATEGIES)}")
    if os.environ.get(CPU_DEVICES_VARIABLE):
        split_cpu(int(os.environ[CPU_DEVICES_VARIABLE]))
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


def describe(strategy: tf.distribute.Strategy) -> str:
    replicas = strategy.num_replicas_in_sync
    name = type(strategy).__name__.lstrip("_").replace("DistributionStrategy", "Strategy")
    return f"{name}, {replicas} replica{'s' * (replicas > 1)}"


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


def _gpus() -> list[tuple[str, tuple[int, int] | None]]:
    found = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        found.append((details.get("device_name", gpu.name), details.get("compute_capability")))
    return found


def use_precision(precision: str, *, quiet: bool = False) -> str:
    """Set Keras' global policy and return it; `auto` decides by device (`auto_precision`) and,
    unless `quiet` (whose standard output may be JSON), says why."""
    if precision == "auto":
        precision, reason = auto_precision(bool(tf.config.list_logical_devices("TPU")), _gpus())
        if not quiet:
            log.info(f"precision: {precision} ({reason})")
    on_cpu = not tf.config.list_logical_devices("TPU") and not _gpus()
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
    except tf.errors.ResourceExhaustedError:
        raise DogbreedsError(
            f"out of memory at --batch-size {batch_size}: try --batch-size {max(1, batch_size // 2)} "
            f"or a smaller --image-size{resume_hint}"
        ) from None
