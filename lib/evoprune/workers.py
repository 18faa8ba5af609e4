"""Score many genomes at once on parallel workers, each holding its own objective (model replica, windows, dense
reference), built once per worker.

``open_pool(make_objective, workers, backend)`` starts the workers; ``pool.map(genomes, *args)`` returns
``objective(genome, *args)`` for every genome, in the order given, whichever worker scored it. Two backends:
``process`` (standard-library processes, spawn context; no extra install) and ``ray`` (Ray actors, local or on a
cluster; ``pip install 'evoprune[ray]'``). The pool only evaluates, so the values are the serial objective's. A
worker that dies is replaced (its objective built again) and its genome scored again.
"""
from __future__ import annotations

import functools
import multiprocessing
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from multiprocessing.connection import wait

import torch

from evoprune import EvopruneError

BACKENDS = ("process", "ray")
MAX_DEATHS = 3  # worker deaths one map call tolerates before it gives up


def build_objective(make_objective: Callable[[], Callable], threads: int) -> Callable:
    torch.set_num_threads(threads)
    return make_objective()


def error_from(err: BaseException) -> Exception:
    """A picklable copy of a worker's error: an EvopruneError as it is, anything else with its traceback."""
    if isinstance(err, EvopruneError):
        return EvopruneError(str(err))
    return RuntimeError("in a worker: " + "".join(traceback.format_exception(err)))


def serve(conn, make_objective: Callable[[], Callable], threads: int) -> None:
    """A process worker: build the objective, say ready, then score (genome, args) messages until told to stop."""
    try:
        objective = build_objective(make_objective, threads)
    except BaseException as err:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("error", error_from(err)))
        return
    conn.send(("ready", None))
    while (message := conn.recv()) is not None:
        genome, args = message
        try:
            conn.send(("ok", float(objective(genome, *args))))
        except Exception as err:  # noqa: BLE001
            conn.send(("error", error_from(err)))


class Pool:
    """Runs one genome at a time on each worker; subclasses say how to start, submit to, and hear from one."""

    def __init__(self, make_objective: Callable[[], Callable], workers: int, threads: int):
        self.make_objective, self.threads = make_objective, threads
        self.slots = list(range(workers))

    def map(self, genomes: Sequence[Sequence[float]], *args) -> list[float]:
        """``objective(genome, *args)`` of every genome, in order."""
        results: list = [None] * len(genomes)
        todo, idle, running, deaths = deque(range(len(genomes))), deque(self.slots), {}, 0
        while todo or running:
            while todo and idle:
                slot, index = idle.popleft(), todo.popleft()
                self.submit(slot, [float(g) for g in genomes[index]], args)
                running[slot] = index
            slot, alive, value = self.next_result(list(running))
            index = running.pop(slot)
            if alive:
                results[index] = value
            else:
                deaths += 1
                if deaths > MAX_DEATHS:
                    self.close()
                    raise EvopruneError(f"{deaths} workers died during one map (the last on genome {index}); "
                                        f"is the machine out of memory? Try fewer --workers.")
                self.replace(slot)
                todo.appendleft(index)
            idle.append(slot)
        return results

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ProcessPool(Pool):
    """Workers are spawned processes, each talking to the parent through a pipe."""

    def __init__(self, make_objective, workers: int, threads: int):
        super().__init__(make_objective, workers, threads)
        self.context = multiprocessing.get_context("spawn")
        self.conns, self.processes = [None] * workers, [None] * workers
        for slot in self.slots:
            self.start(slot)
        for slot in self.slots:
            self.receive(slot, starting=True)

    def start(self, slot: int) -> None:
        parent, child = self.context.Pipe()
        process = self.context.Process(target=serve, args=(child, self.make_objective, self.threads), daemon=True)
        process.start()
        child.close()  # the parent's copy of the child's end: without it a dead child would never read as EOF
        self.conns[slot], self.processes[slot] = parent, process

    def receive(self, slot: int, starting: bool = False):
        """(alive, value) of a worker's next message; an objective's error is raised here."""
        try:
            kind, value = self.conns[slot].recv()
        except (EOFError, OSError):
            if starting:
                self.close()
                raise EvopruneError("a worker died while building its objective (out of memory?)") from None
            return False, None
        if kind == "error":
            self.close()
            raise value
        return True, value

    def submit(self, slot: int, genome: list[float], args: tuple) -> None:
        self.conns[slot].send((genome, args))

    def next_result(self, running: list[int]):
        ready = wait([self.conns[s] for s in running])
        slot = next(s for s in running if self.conns[s] in ready)
        return (slot, *self.receive(slot))

    def replace(self, slot: int) -> None:
        self.stop(slot)
        self.start(slot)
        self.receive(slot, starting=True)

    def stop(self, slot: int) -> None:
        conn, process = self.conns[slot], self.processes[slot]
        if conn is None:
            return
        try:
            conn.send(None)
        except OSError:
            pass
        process.join(timeout=5)
        if process.is_alive():
            process.kill()
            process.join()
        conn.close()
        self.conns[slot] = self.processes[slot] = None

    def close(self) -> None:
        for slot in self.slots:
            self.stop(slot)


def import_ray():
    try:
        import ray
    except ImportError:
        raise EvopruneError("the ray backend needs Ray, an optional extra: pip install 'evoprune[ray]'") from None
    return ray


class RayWorker:
    """A Ray actor's state: one objective, built once."""

    def __init__(self, make_objective, threads: int):
        self.objective = build_objective(make_objective, threads)

    def ready(self) -> bool:
        return True

    def evaluate(self, genome: list[float], *args) -> float:
        return float(self.objective(genome, *args))


class RayPool(Pool):
    """Workers are Ray actors (one GPU each where the cluster has GPUs); a local Ray starts if none is running."""

    def __init__(self, make_objective, workers: int, threads: int, address: str | None = None):
        super().__init__(make_objective, workers, threads)
        self.ray = ray = import_ray()
        self.started = not ray.is_initialized()
        if self.started:
            if address:
                ray.init(address=address)
            else:
                ray.init(num_cpus=workers * threads, include_dashboard=False, log_to_driver=False)
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        self.actor = ray.remote(num_cpus=threads, num_gpus=gpus)(RayWorker)
        self.actors = [self.actor.remote(make_objective, threads) for _ in self.slots]
        self.pending: dict[int, object] = {}
        try:  # built now, so that a broken objective fails here and timings of map exclude the loading
            ray.get([a.ready.remote() for a in self.actors])
        except ray.exceptions.RayActorError as err:
            self.close()
            raise EvopruneError(f"a Ray worker failed to build its objective: {err}") from None

    def submit(self, slot: int, genome: list[float], args: tuple) -> None:
        self.pending[slot] = self.actors[slot].evaluate.remote(genome, *args)

    def next_result(self, running: list[int]):
        refs = {self.pending[s]: s for s in running}
        [ref], _ = self.ray.wait(list(refs), num_returns=1)
        slot = refs[ref]
        del self.pending[slot]
        try:
            return slot, True, self.ray.get(ref)
        except self.ray.exceptions.RayActorError:
            return slot, False, None
        except Exception:
            self.close()
            raise

    def replace(self, slot: int) -> None:
        self.ray.kill(self.actors[slot])
        self.actors[slot] = self.actor.remote(self.make_objective, self.threads)

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()


def open_pool(make_objective: Callable[[], Callable], workers: int, backend: str = "process",
              ray_address: str | None = None, threads_per_worker: int = 1) -> Pool:
    """Start ``workers`` workers, each setting ``torch.set_num_threads(threads_per_worker)`` and then building its
    objective with ``make_objective()`` (a picklable zero-argument callable, e.g. a functools.partial of a
    module-level function or class). Use as a context manager, or call ``close()``."""
    if backend not in BACKENDS:
        raise EvopruneError(f"unknown worker backend {backend!r}: use one of {', '.join(BACKENDS)}.")
    if workers < 1 or threads_per_worker < 1:
        raise EvopruneError("--workers and the threads per worker must be at least 1.")
    if ray_address and backend != "ray":
        raise EvopruneError("--ray-address needs the ray backend.")
    if backend == "ray":
        return RayPool(make_objective, workers, threads_per_worker, ray_address)
    return ProcessPool(make_objective, workers, threads_per_worker)


def session_objective(spec):
    """A worker's search objective ``f(genome, n_windows)`` for ``objective.FitnessSpec``: its own session (model,
    data, pruner, calibration, dense reference)."""
    from evoprune.objective import build_objective
    from evoprune.session import Session
    return build_objective(Session(spec.model, spec.data), spec)


def session_pool(spec, workers: int, ray_address: str | None = None, backend: str | None = None,
                 threads_per_worker: int = 1) -> Pool:
    """A pool scoring a search's genomes (``objective.FitnessSpec`` with its dtype resolved); its ``map(genomes,
    n_windows)`` is what the optimizer calls. Backend: ``ray`` when given a cluster address, else ``process``."""
    backend = backend or ("ray" if ray_address else "process")
    return open_pool(functools.partial(session_objective, spec), workers, backend, ray_address,
                     threads_per_worker)

