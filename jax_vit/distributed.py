"""Training on several processes (hosts) with JAX's multi-controller runtime, `jax.distributed`.

Every process runs the same command on its own devices. `initialize()` joins them into one run, after which
`jax.devices()` lists the devices of every process and the trainer's mesh spans them all; the train step's
collectives then cross hosts (NCCL on GPUs, ICI/DCN on TPUs, gloo over TCP on CPUs). Where the processes
come from: `JAX_COORDINATOR_ADDRESS` (process 0's host:port), `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` in the
environment, or, with none of them set, JAX's own detection (Cloud TPU pod slices, SLURM, Open MPI, k8s).

A process that dies must not leave the others waiting forever: one timeout bounds the wait for every process
to join, JAX's heartbeat (a peer silent that long counts as dead, and the survivors are stopped) and the
shutdown barrier. A failing process leaves at once (`exit_code`), so the others see it gone.
"""
from __future__ import annotations

import contextlib
import os
import socket
import sys
import time

import jax
import numpy as np

ENV_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
DEFAULT_TIMEOUT_S = 120
HOW = "set JAX_COORDINATOR_ADDRESS=host:port (process 0's), JAX_NUM_PROCESSES and JAX_PROCESS_ID for every process"


class DistributedError(RuntimeError):
    """A run of several processes that cannot start or go on: the message names the fix."""


def _explicit_env() -> tuple[str, int, int] | None:
    """(coordinator, process count, process id) from the environment; None when none of the three is set."""
    values = {name: os.environ.get(name, "").strip() for name in ENV_VARS}
    missing = [name for name, value in values.items() if not value]
    if len(missing) == len(ENV_VARS):
        return None
    if missing:
        raise DistributedError(f"{', '.join(missing)} not set: {HOW}, or none of them on a TPU pod slice or under "
                               f"SLURM (JAX finds them there)")
    address = values["JAX_COORDINATOR_ADDRESS"]
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DistributedError(f"JAX_COORDINATOR_ADDRESS={address!r} is not host:port; {HOW}")
    try:
        count, index = int(values["JAX_NUM_PROCESSES"]), int(values["JAX_PROCESS_ID"])
    except ValueError:
        raise DistributedError(f"JAX_NUM_PROCESSES={values['JAX_NUM_PROCESSES']!r} and JAX_PROCESS_ID="
                               f"{values['JAX_PROCESS_ID']!r} must be integers; {HOW}") from None
    if count < 1 or not 0 <= index < count:
        raise DistributedError(f"JAX_PROCESS_ID={index} with JAX_NUM_PROCESSES={count}: the ids run from 0 to "
                               f"JAX_NUM_PROCESSES - 1, one per process")
    return address, count, index


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _check_port_free(address: str) -> None:
    """Process 0 serves the coordinator on the address's port: JAX crashes (no Python error) when it is taken."""
    _, port = _split(address)
    for family, any_host in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
        try:
            probe = socket.socket(family, socket.SOCK_STREAM)
        except OSError:  # no IPv6 on this host
            continue
        with probe:
            # As gRPC does: a port only in TIME_WAIT from an earlier run is free, one with a listener is not.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((any_host, port))
            except OSError as error:
                raise DistributedError(f"port {port} of JAX_COORDINATOR_ADDRESS={address} is taken on this host "
                                       f"({error.strerror}): choose a free port, the same for every process") from None


def _wait_for_coordinator(address: str, timeout_s: float) -> None:
    """JAX aborts the process (no Python error) when process 0 cannot be reached: look first, and say why."""
    host, port = _split(address)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host, port), timeout=min(5.0, timeout_s)).close()
            return
        except OSError as error:
            if time.monotonic() >= deadline:
                raise DistributedError(
                    f"no coordinator at JAX_COORDINATOR_ADDRESS={address} after {timeout_s:g} s ({error.strerror or error}): "
                    f"start process 0 (JAX_PROCESS_ID=0) on that host with the same address, check the port is "
                    f"reachable from here, or raise --peer-timeout if the processes start far apart") from None
            time.sleep(0.2)


def add_arguments(parser) -> None:
    """`--distributed` and `--peer-timeout`, the same in every training command line."""
    from jax_vit.configs import POSITIVE_INT

    parser.add_argument("--distributed", action="store_true",
                        help="one of several processes (hosts) training together: JAX_COORDINATOR_ADDRESS, "
                             "JAX_NUM_PROCESSES, JAX_PROCESS_ID from the environment, found by JAX on TPU pods and "
                             "SLURM (docs/distributed.md)")
    parser.add_argument("--peer-timeout", type=POSITIVE_INT.parse, metavar="SECONDS",
                        help=f"with --distributed: how long to wait for every process to join, and after which a "
                             f"silent process counts as dead and the others stop (default {DEFAULT_TIMEOUT_S})")


def check_arguments(parser, args):
    """`args`, after refusing a --peer-timeout given without --distributed (it would silently do nothing)."""
    if args.peer_timeout is not None and not args.distributed:
        parser.error("--peer-timeout applies only with --distributed")
    return args


def initialize(timeout_s: int = DEFAULT_TIMEOUT_S) -> None:
    """Joins this process to the run (`jax.distributed.initialize`); call it before anything else touches JAX.

    `timeout_s` bounds the wait for every process to join and how long a silent peer may go unnoticed."""
    if jax.distributed.is_initialized():
        return
    explicit = _explicit_env()
    # XLA:CPU needs a cross-process collectives backend; gloo (over TCP) is JAX's own. GPUs and TPUs ignore it.
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except AttributeError:  # a JAX without the option: its CPU backend chooses by itself
        pass
    address = count = index = None
    if explicit is not None:
        address, count, index = explicit
        if index == 0:
            _check_port_free(address)
        else:
            _wait_for_coordinator(address, timeout_s)
        print(f"distributed: process {index} of {count}, coordinator {address} (waiting up to {timeout_s} s for "
              f"all {count} to join)", file=sys.stderr, flush=True)
    try:
        jax.distributed.initialize(address, count, index, initialization_timeout=timeout_s,
                                   heartbeat_timeout_seconds=timeout_s, shutdown_timeout_seconds=timeout_s)
    except (ValueError, RuntimeError) as error:  # JAX found no cluster, or the runtime refused
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if explicit is None:
            raise DistributedError(f"--distributed found no TPU pod slice, SLURM job or MPI launch (JAX: {first}): "
                                   f"{HOW}") from None
        raise DistributedError(f"jax.distributed.initialize failed ({first}): check that every process has the "
                               f"same three variables") from None


def is_primary() -> bool:
    """Process 0: the one that writes the run's files and shows its progress (every process checkpoints)."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """A barrier across all processes (nothing with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def all_agree(flag: bool) -> bool:
    """True when `flag` holds on every process (each passes its own)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.asarray(flag, np.int32))))


def to_host(array) -> np.ndarray:
    """The whole value of `array` as NumPy, also when its shards sit on several processes (then every process
    must call it: the shards are exchanged)."""
    if isinstance(array, jax.Array) and not (array.is_fully_addressable or array.is_fully_replicated):
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(array, tiled=True))
    return np.asarray(jax.device_get(array))


@contextlib.contextmanager
def peer_failures():
    """Turns a failed cross-process collective (a peer that died: gloo's 'Connection reset by peer') into a
    DistributedError naming the fix. With one process nothing changes."""
    try:
        yield
    except jax.errors.JaxRuntimeError as error:
        if jax.process_count() == 1:
            raise
        lines = str(error).strip().splitlines()
        raise DistributedError(
            f"process {jax.process_index()}: a step with the other processes failed ({lines[0] if lines else error}); "
            f"most likely another process stopped: read its log, then start every process again with --resume"
        ) from None


def exit_code(code: int) -> int:
    """`code`, for sys.exit. A process of a multi-process run that fails leaves at once instead: JAX's exit
    handler would first wait at the shutdown barrier for peers that may be gone, then abort with a stack trace."""
    if code and jax.distributed.is_initialized():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
