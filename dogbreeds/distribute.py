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

import keras
import tensorflow as tf

from dogbreeds.config import STRATEGIES
from dogbreeds.errors import DogbreedsError, Interrupted, log

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


def use_precision(precision: str) -> str:
    """Set Keras' global policy; auto: mixed_float16 on a CUDA GPU, mixed_bfloat16 on a TPU, else float32."""
    if precision == "auto":
        if tf.config.list_logical_devices("TPU"):
            precision = "mixed_bfloat16"
        elif tf.config.list_physical_devices("GPU"):
            precision = "mixed_float16"
        else:
            precision = "float32"
    keras.mixed_precision.set_global_policy(precision)
    return precision


@contextmanager
def user_facing_failures(batch_size: int, resume_hint: str = ""):
    """Ctrl-C, SIGTERM and out-of-memory become one line that says how to go on."""
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted{resume_hint}") from None
    except tf.errors.ResourceExhaustedError:
        raise DogbreedsError(
            f"out of memory at --batch-size {batch_size}: try --batch-size {max(1, batch_size // 2)} "
            f"or a smaller --image-size{resume_hint}"
        ) from None
