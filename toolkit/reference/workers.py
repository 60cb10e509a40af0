"""The guide's worker architecture: research in Celery worker processes (`--queue celery`,
Redis or RabbitMQ as broker) instead of the in-process pool.

The service starts `CeleryTuning.workers` worker nodes as its own child processes
(`python -m perfkit.reference.workers`), each a Celery prefork worker with one pool process,
and stops them with it. One process per node rather than one node with N processes: a node's
prefetch is what the guide's mistake is about (a node reserving many long tasks while another
node idles), and inside one node Celery's fair scheduling would hide it. Each node asks the
kernel to stop it if the service dies (PR_SET_PDEATHSIG), so even a killed service leaves no
orphans behind.

A research task gets a job id; its worker process reads the job's items from the database and
researches them with the same code as the in-process pool (research.run_job), against the
service's simulated LLM over HTTP. Callbacks are tasks on their own queue."""

import asyncio
import ctypes
import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any

import psutil
from celery import Celery
from kombu import Exchange, Queue
from kombu.exceptions import OperationalError

from ..errors import TargetError
from .settings import CeleryTuning, ExtraLatency, LatencyProfile, ServiceSettings

log = logging.getLogger(__name__)

RESEARCH_TASK = "perfkit.reference.research_job"
CALLBACK_TASK = "perfkit.reference.send_callback"
_PR_SET_PDEATHSIG = 1


@dataclass
class CeleryQueue:
    """The Celery app of one service instance and, on the service's side, its worker nodes."""

    app: Celery
    tuning: CeleryTuning
    nodes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    # One broker connection for queue-depth reads, used by one thread at a time.
    broker_lock: threading.Lock = field(default_factory=threading.Lock)
    broker: Any = None
    # prometheus_client's multiprocess directory: the research processes count into it, and
    # the service's /metrics reads their counts from it (metrics.render_prometheus).
    metrics_dir: str | None = None


def build_celery(tuning: CeleryTuning) -> Celery:
    app = Celery("perfkit_reference", broker=tuning.broker_url, set_as_current=False)
    exchange = Exchange(tuning.queue_prefix, type="direct")
    app.conf.update(
        task_queues=[Queue(tuning.research_queue, exchange, routing_key="research"),
                     Queue(tuning.callbacks_queue, exchange, routing_key="callbacks")],
        task_routes={RESEARCH_TASK: {"queue": tuning.research_queue},
                     CALLBACK_TASK: {"queue": tuning.callbacks_queue}},
        task_default_queue=tuning.research_queue,
        worker_prefetch_multiplier=tuning.prefetch_multiplier,
        task_acks_late=tuning.acks_late,
        # With acks_late, a worker killed mid-task leaves its job to be delivered again.
        task_reject_on_worker_lost=tuning.acks_late,
        worker_max_tasks_per_child=tuning.max_tasks_per_child,
        # A task whose node lost the broker cannot be acknowledged any more and will be
        # delivered again: stop it rather than research the job twice (Celery 6's default).
        worker_cancel_long_running_tasks_on_connection_loss=tuning.acks_late,
        # Research results live in the database; only callbacks keep a Celery result, and
        # only this long.
        result_backend=(tuning.broker_url if tuning.broker_url.startswith("redis")
                        else "rpc://"),
        result_expires=tuning.result_expires_s,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


def settings_to_json(settings: ServiceSettings, simulator_url: str) -> str:
    return json.dumps({"settings": dataclasses.asdict(settings), "simulator_url": simulator_url})


def settings_from_json(text: str) -> tuple[ServiceSettings, str]:
    raw = json.loads(text)
    fields = raw["settings"]
    settings = ServiceSettings(**{
        **fields,
        "variants": tuple(fields["variants"]),
        "profile": LatencyProfile(**fields["profile"]),
        "celery": CeleryTuning(**fields["celery"]),
        "extra_latency": tuple(ExtraLatency(**extra) for extra in fields["extra_latency"]),
    })
    return settings, str(raw["simulator_url"])


async def start_workers(settings: ServiceSettings, simulator_url: str) -> CeleryQueue:
    """Empty this instance's queues (their jobs were marked cancelled with the rest of a
    previous run's) and start the worker nodes."""
    queue = CeleryQueue(build_celery(settings.celery), settings.celery)
    await asyncio.to_thread(read_queue_depths, queue)  # declares the queues on the broker
    purged = await asyncio.to_thread(queue.app.control.purge)
    if purged:
        log.warning("discarded %d research tasks of a previous run", purged)
    argv = settings_to_json(settings, simulator_url)
    queue.metrics_dir = tempfile.mkdtemp(prefix="perfkit-reference-metrics-")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": queue.metrics_dir}
    for index in range(settings.celery.workers):
        # Their own process group: a Ctrl-C in the terminal reaches the service, which stops
        # them in order (warm shutdown) instead of everyone at once.
        # stdout is the service's (its first line is the URL a runner reads): Celery's
        # banner goes nowhere; the nodes' log lines still reach stderr.
        queue.nodes.append(subprocess.Popen(
            [sys.executable, "-m", "perfkit.reference.workers", argv, str(index),
             str(os.getpid())], process_group=0, stdout=subprocess.DEVNULL, env=env))
    try:
        await wait_for_pool_processes(queue, timeout_s=60.0)
    except BaseException:
        await stop_workers(queue, grace_s=0.0)
        raise
    return queue


async def wait_for_pool_processes(queue: CeleryQueue, timeout_s: float) -> None:
    """Until every node has forked its pool process (it is consuming by then), so the service
    announces itself with its workers in place and reports them from the first request."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        exited = [node.pid for node in queue.nodes if node.poll() is not None]
        if exited:
            raise TargetError(f"celery worker {exited[0]} exited while starting; its error is "
                              "above")
        if len(worker_processes(queue)) >= 2 * len(queue.nodes):
            return
        await asyncio.sleep(0.05)
    raise TargetError(f"celery workers did not start within {timeout_s:.0f} s")


async def stop_workers(queue: CeleryQueue, grace_s: float, busy: bool = True) -> None:
    """When a worker is `busy`, warm shutdown (SIGTERM: finish the running task) for up to
    `grace_s`; then SIGKILL to each node's process group (the node and its pool process). Idle
    nodes are killed at once: even an idle node's warm shutdown takes seconds (RabbitMQ's
    about five), and nothing of theirs is lost (reserved tasks' jobs are cancelled with the
    rest, and skipped if ever delivered again)."""
    if busy:
        for node in queue.nodes:
            if node.poll() is None:
                node.send_signal(signal.SIGTERM)
        deadline = asyncio.get_running_loop().time() + grace_s
        for node in queue.nodes:
            while node.poll() is None and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)
            if node.poll() is None:
                log.warning("celery worker %d still busy after %.0f s; killed", node.pid,
                            grace_s)
    for node in queue.nodes:
        try:
            os.killpg(node.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        node.wait()
    await asyncio.to_thread(close_broker, queue)
    if queue.metrics_dir is not None:
        shutil.rmtree(queue.metrics_dir, ignore_errors=True)


def close_broker(queue: CeleryQueue) -> None:
    with queue.broker_lock:
        if queue.broker is not None:
            queue.broker.release()
            queue.broker = None
    queue.app.close()


def read_queue_depths(queue: CeleryQueue) -> dict[str, int | None]:
    """Messages waiting in each queue, from the broker (LLEN on Redis, queue.declare on
    RabbitMQ). Tasks a worker has reserved (prefetched) are not waiting: with a high
    prefetch multiplier the queue looks empty while jobs wait inside a busy worker."""
    depths: dict[str, int | None] = {}
    with queue.broker_lock:
        try:
            if queue.broker is None:
                queue.broker = queue.app.connection_for_read()
            channel = queue.broker.default_channel
            for declared in queue.app.conf.task_queues:
                _, count, _ = declared.bind(channel).queue_declare()
                depths[declared.name] = int(count)
        except Exception as exc:  # the broker's errors are many; the gap is marked missing
            log.warning("cannot read queue depths from the broker: %s", exc)
            if queue.broker is not None:
                queue.broker.release()
            queue.broker = None
            depths = {declared.name: None for declared in queue.app.conf.task_queues}
    return depths


def worker_processes(queue: CeleryQueue) -> list[psutil.Process]:
    processes = []
    for node in queue.nodes:
        if node.poll() is not None:
            continue
        try:
            process = psutil.Process(node.pid)
            processes += [process, *process.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    return processes


async def read_celery_state(queue: CeleryQueue) -> dict[str, Any]:
    depths = await asyncio.to_thread(read_queue_depths, queue)
    return {
        "queue": "celery",
        "queue_depth": depths[queue.tuning.research_queue],
        "callbacks_queue_depth": depths[queue.tuning.callbacks_queue],
        "workers": sum(node.poll() is None for node in queue.nodes),
        "worker_pids": [process.pid for process in worker_processes(queue)],
        "broker": queue.app.connection_for_read().as_uri(),  # password masked
        "prefetch_multiplier": queue.tuning.prefetch_multiplier,
        "acks_late": queue.tuning.acks_late,
        "max_tasks_per_child": queue.tuning.max_tasks_per_child,
    }


async def enqueue_job(queue: CeleryQueue, job_id: str) -> bool:
    """False when the broker could not take the task (after Celery's own publish retries)."""
    broker = queue.app.connection_for_write()
    lost = (OperationalError, *broker.connection_errors, *broker.channel_errors)
    try:
        # A thread, so that a slow broker holds up this request only, never the event loop.
        # ignore_result: else the Redis result backend subscribes to the task's result
        # channel on every send, a round trip per create for a result nobody reads.
        await asyncio.to_thread(queue.app.send_task, RESEARCH_TASK, args=[job_id],
                                ignore_result=True)
    except lost as exc:
        log.error("cannot queue research job %s: %s", job_id, exc)
        return False
    return True


async def enqueue_callback(queue: CeleryQueue, callback_url: str, body: dict[str, Any]) -> None:
    await asyncio.to_thread(queue.app.send_task, CALLBACK_TASK, args=[callback_url, body],
                            ignore_result=False)


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel for SIGTERM when the parent dies; if it already has, stop now."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:
        sys.exit(0)


def run_node(settings: ServiceSettings, simulator_url: str, index: int,
             service_pid: int) -> None:
    """One worker node (this process) with one pool process that researches."""
    from celery.platforms import SecurityWarning
    from celery.signals import worker_process_init

    from . import worker_tasks

    die_with_parent(service_pid)
    # Celery warns about root even with JSON-only content (its risk is pickle); containers and
    # CI run as root, and the warning would be the only line on stderr.
    warnings.filterwarnings("ignore", category=SecurityWarning)
    app = build_celery(settings.celery)
    worker_tasks.register_tasks(app, settings, simulator_url)
    node_pid = os.getpid()

    @worker_process_init.connect(weak=False)
    def follow_node(**_: Any) -> None:
        die_with_parent(node_pid)

    app.worker_main([
        "worker", "--pool=prefork", "--concurrency=1", "--loglevel=WARNING",
        f"--queues={settings.celery.research_queue},{settings.celery.callbacks_queue}",
        f"--hostname=research{index}.{service_pid}@%h",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ])


if __name__ == "__main__":
    node_settings, node_simulator_url = settings_from_json(sys.argv[1])
    run_node(node_settings, node_simulator_url, int(sys.argv[2]), int(sys.argv[3]))
