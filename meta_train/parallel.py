"""Spreading the task axis of meta-training over devices (and hosts) with shard_map or pmap.

Every leaf of an estimator's state has a leading task axis; with parallelism on, that axis
is split evenly over the devices of a one-axis mesh named "tasks", each device runs its
tasks with vmap (or lax.map), and reductions over tasks become cross-device means.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

TASK_AXIS = "tasks"
MODES = ("none", "shard_map", "pmap")


def force_host_devices(count: int, one_thread_per_device: bool = True) -> None:
    """Splits this process's CPU into `count` XLA devices (each runs its own thread), for shard_map over tasks.

    On a CPU host one XLA program of small ops keeps the cores poorly busy; `count` devices
    running their share of the tasks concurrently use them better. With `one_thread_per_device`
    (and `count` > 1) each device's matmuls also stay on its own thread
    (`--xla_cpu_multi_thread_eigen=false`, unless XLA_FLAGS already sets it): with one device per
    core, splitting small matmuls across cores only adds hand-offs. Must be called before JAX
    starts its CPU backend (before the first array is made); after that it raises RuntimeError and
    leaves XLA_FLAGS as it was.
    """
    if count < 1:
        raise ValueError(f"host device count must be >= 1, got {count}")
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", "")).strip()
    flags = f"{flags} --xla_force_host_platform_device_count={count}"
    if one_thread_per_device and count > 1 and "xla_cpu_multi_thread_eigen" not in flags:
        flags += " --xla_cpu_multi_thread_eigen=false"
    previous = os.environ.get("XLA_FLAGS")
    os.environ["XLA_FLAGS"] = flags.strip()
    if jax.default_backend() == "cpu" and jax.device_count() != count:
        if previous is None:
            del os.environ["XLA_FLAGS"]
        else:
            os.environ["XLA_FLAGS"] = previous
        raise RuntimeError(
            f"JAX's CPU backend already started with {jax.device_count()} device(s); "
            f"set XLA_FLAGS=--xla_force_host_platform_device_count={count} before running"
        )


NO_LOOP_UNROLLING = "xla_cpu_disable_loop_unrolling"
_EXTRA_OPTIONS_FLAG = re.compile(r"--xla_backend_extra_options=(\S*)")


def backend_started() -> bool:
    """Whether JAX has already started a backend in this process (XLA_FLAGS no longer take effect)."""
    from jax._src import xla_bridge

    return xla_bridge.backends_are_initialized()


def with_loop_unrolling(flags: str, enabled: bool) -> str:
    """Returns XLA_FLAGS text `flags` with XLA:CPU's loop unrolling on (XLA's default) or off, other options kept."""
    match = _EXTRA_OPTIONS_FLAG.search(flags)
    options = [o for o in (match.group(1).split(",") if match else []) if o and o.split("=")[0] != NO_LOOP_UNROLLING]
    if not enabled:
        options.append(NO_LOOP_UNROLLING)
    rest = _EXTRA_OPTIONS_FLAG.sub("", flags).split()
    return " ".join(rest + ([f"--xla_backend_extra_options={','.join(options)}"] if options else []))


def set_cpu_loop_unrolling(enabled: bool) -> bool:
    """Turns LLVM's loop unrolling in the code XLA:CPU generates on or off for this process (XLA_FLAGS).

    Off, the meta-training programs of small tasks compile 0.3-0.8 s (about 10 %) faster and run as
    fast; large elementwise work runs slower (l2l_lstm's step on a 400k-parameter model: about 30 %).
    Returns False, leaving XLA_FLAGS as it was, when JAX's backend has already started and the
    setting would change: it can then no longer take effect.
    """
    current = os.environ.get("XLA_FLAGS", "")
    flags = with_loop_unrolling(current, enabled)
    if flags.split() == current.split():
        return True
    if backend_started():
        return False
    os.environ["XLA_FLAGS"] = flags
    return True


def available_cores() -> int:
    """The number of CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def host_device_count(requested: int, num_tasks: int, cores: Optional[int] = None) -> int:
    """Resolves a `host_devices` setting: N > 0 is N; -1 is one device per core, as many as divide
    `num_tasks` evenly (the largest divisor of num_tasks not above the core count)."""
    if requested > 0:
        return requested
    if requested != -1:
        raise ValueError(f"host_devices must be -1 (one per core), 0 (leave as is) or a positive count, got {requested}")
    cores = available_cores() if cores is None else cores
    return max(d for d in range(1, max(1, min(cores, num_tasks)) + 1) if num_tasks % d == 0)


class TaskParallelism:
    """Which devices run the task axis, and how: 'none' (default device), 'shard_map' or 'pmap'."""

    def __init__(self, mode: str = "none", num_devices: Optional[int] = None):
        if mode not in MODES:
            raise ValueError(f"parallel mode must be one of {MODES}, got {mode!r}")
        available = jax.device_count()
        count = available if not num_devices else int(num_devices)
        if mode != "none" and not 1 <= count <= available:
            raise ValueError(f"asked for {count} devices but {available} are visible")
        if mode == "pmap" and jax.process_count() > 1:
            raise ValueError("parallel mode 'pmap' runs on one host; use 'shard_map' across hosts")
        self.mode = mode
        self.num_devices = 1 if mode == "none" else count
        self.mesh = Mesh(np.asarray(jax.devices()[:count]), (TASK_AXIS,)) if mode != "none" else None

    @classmethod
    def over_visible_devices(cls, num_tasks: int) -> "TaskParallelism":
        """Returns shard_map over as many of this process's devices as divide `num_tasks` evenly, or 'none' when
        that is one device (what a Trainer built without `parallelism` uses)."""
        if jax.process_count() > 1:
            return cls()
        count = host_device_count(-1, int(num_tasks), cores=jax.device_count())
        return cls("shard_map", count) if count > 1 else cls()

    def check_num_tasks(self, num_tasks: int) -> None:
        """Raises ValueError unless the tasks split evenly over the devices."""
        if num_tasks % self.num_devices:
            raise ValueError(f"num_tasks ({num_tasks}) must be a multiple of the number of devices ({self.num_devices})")

    def task_sharding(self) -> Optional[NamedSharding]:
        """The sharding of arrays whose leading axis is the task axis (None without parallelism)."""
        return None if self.mesh is None else NamedSharding(self.mesh, PartitionSpec(TASK_AXIS))

    def replicated_sharding(self) -> Optional[NamedSharding]:
        """The sharding of arrays every device holds whole (None without parallelism)."""
        return None if self.mesh is None else NamedSharding(self.mesh, PartitionSpec())

    def over_tasks(self, per_device: Callable[..., Any]) -> Callable[..., Any]:
        """Returns `per_device(shared, *task_args)` run across the devices.

        `shared` is given whole to every device; task_args and the outputs have a leading task axis.
        """
        if self.mode == "none":
            return per_device
        if self.mode == "shard_map":

            def sharded(shared, *args):
                specs = (PartitionSpec(),) + (PartitionSpec(TASK_AXIS),) * len(args)
                return jax.shard_map(
                    per_device, mesh=self.mesh, in_specs=specs, out_specs=PartitionSpec(TASK_AXIS), check_vma=False
                )(shared, *args)

            return sharded
        devices = self.num_devices

        def pmapped(shared, *args):
            split = jax.tree.map(lambda x: x.reshape((devices, x.shape[0] // devices) + x.shape[1:]), args)
            in_axes = (None,) + (0,) * len(args)
            out = jax.pmap(per_device, in_axes=in_axes, devices=self.mesh.devices.tolist())(shared, *split)
            return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), out)

        return pmapped

    def __repr__(self) -> str:
        return f"TaskParallelism({self.mode!r}, num_devices={self.num_devices})"
