"""Setting up the process a run trains in, before JAX starts: the multi-process runtime, XLA:CPU loop unrolling
and the split of the CPU into one device per core.

`lopt-meta-train` does this from the config. From Python (a script or a notebook), one call made
before anything touches a device gives the same fast path:

    import meta_train.launch
    meta_train.launch.use_all_cores(num_tasks=8)   # first, before any JAX array exists
    trainer = meta_train.Trainer(family, optimizer, estimator, horizon)  # spreads tasks over the cores
"""

from __future__ import annotations

import os
import warnings

import jax
import ml_collections

from meta_train.config import ConfigError
from meta_train.parallel import force_host_devices, host_device_count, set_cpu_loop_unrolling, with_loop_unrolling


def use_all_cores(num_tasks: int = 8, loop_unrolling: bool = True) -> int:
    """Splits the CPU into one XLA device per core (as many as divide `num_tasks` evenly) and sets XLA:CPU's
    loop unrolling; returns the device count JAX then has.

    Must run before JAX starts its backend (before the first array is made); afterwards the
    split cannot change, a warning says so (rerunning a notebook cell is harmless), and the
    backend keeps the devices it has. A `Trainer` built without `parallelism` then shards its
    tasks over these devices.
    """
    set_cpu_loop_unrolling(bool(loop_unrolling))
    try:
        force_host_devices(host_device_count(-1, int(num_tasks)))
    except RuntimeError as err:
        warnings.warn(f"use_all_cores() came too late: {err}", stacklevel=2)
    return jax.device_count()


def initialize_distributed(config: ml_collections.ConfigDict) -> None:
    """Joins JAX's multi-process runtime when `distributed.enabled`; unset fields come from the environment.

    Must run before anything touches a device.
    """
    settings = config.distributed
    if not settings.enabled:
        return
    kwargs = {}
    if settings.coordinator_address:
        kwargs["coordinator_address"] = settings.coordinator_address
    if settings.num_processes > 0:
        kwargs["num_processes"] = settings.num_processes
    if settings.process_id >= 0:
        kwargs["process_id"] = settings.process_id
    try:
        jax.distributed.initialize(**kwargs)
    except (RuntimeError, ValueError) as err:
        raise ConfigError(f"config.distributed: could not join the multi-process runtime: {err}") from None


def apply_cpu_loop_unrolling(config: ml_collections.ConfigDict) -> bool:
    """Sets XLA:CPU's loop unrolling for this process from `config.xla_cpu_loop_unrolling` (see
    parallel.set_cpu_loop_unrolling); returns whether the setting is in effect.

    Must run before anything touches a device; in a process whose backend has already started
    (a notebook, a test) a change cannot take effect and a warning says so.
    """
    enabled = bool(config.xla_cpu_loop_unrolling)
    if set_cpu_loop_unrolling(enabled):
        return True
    warnings.warn(
        f"xla_cpu_loop_unrolling={enabled} has no effect: JAX's backend already started in this process; "
        f"set XLA_FLAGS={with_loop_unrolling(os.environ.get('XLA_FLAGS', ''), enabled)!r} before starting it",
        stacklevel=2,
    )
    return False


def apply_host_devices(config: ml_collections.ConfigDict) -> int:
    """Splits the CPU into `meta_train.host_devices` XLA devices (see parallel.force_host_devices); returns the
    device count JAX then has.

    Must run before anything touches a device. With -1 (one per core) in a process whose backend
    has already started, the devices it has are kept; an explicit count that can no longer be
    set is a ConfigError.
    """
    mt = config.meta_train
    if mt.host_devices == 0:
        return jax.device_count()
    count = host_device_count(int(mt.host_devices), int(mt.num_tasks))
    try:
        force_host_devices(count)
    except RuntimeError as err:
        if mt.host_devices != -1:
            raise ConfigError(f"meta_train.host_devices={mt.host_devices}: {err}") from None
    return jax.device_count()
