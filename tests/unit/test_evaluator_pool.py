"""The evaluator pool with real worker processes: results, errors, timeouts, crashes."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
from collections.abc import AsyncIterator, Callable, Hashable
from pathlib import Path

import _gojsonnet
import pytest
import pytest_asyncio

from jaas import defaults
from jaas.api.models import JsonnetVariable, format_duration
from jaas.api.reasons import Reason, ReasonError
from jaas.evaluator.libraries import load_library_paths
from jaas.evaluator.pool import EvaluatorPool, format_bytes
from jaas.evaluator.request import EvaluationRequest, EvaluationResult, EvaluatorBusy
from jaas.evaluator.worker import AddressSpace

GiB = 1024**3
ENDLESS = b"std.foldl(function(a, b) a + b, std.range(1, 1000000000), 0)"


def snippet(source: bytes | str, **files: bytes) -> EvaluationRequest:
    main = source.encode() if isinstance(source, str) else source
    return EvaluationRequest("main.jsonnet", {"main.jsonnet": main, **files}, label="ns/test")


async def eventually(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` (pool replacements happen in the background); fail after a minute."""
    for _ in range(3000):
        if condition():
            return
        await asyncio.sleep(0.02)
    pytest.fail("condition not reached")


async def until_full(pool: EvaluatorPool) -> None:
    """Wait until every worker is alive and idle."""
    await eventually(lambda: pool.idle == pool.size)


async def failure(pool: EvaluatorPool, request: EvaluationRequest) -> ReasonError:
    with pytest.raises(ReasonError) as caught:
        await pool.evaluate(request)
    return caught.value


@pytest_asyncio.fixture(scope="module")
async def pool() -> AsyncIterator[EvaluatorPool]:
    # rjsonnet: these tests also show how the pool survives its crashes and panics.
    async with EvaluatorPool(2, timeout=1.0, memory_limit=1 * GiB, engine="rjsonnet") as started:
        yield started


async def test_result_is_go_jsonnet_format(pool: EvaluatorPool) -> None:
    source = "{b: [1 / 3, 'é\\u007f'], a: {}, c: 1e21}"
    result = await pool.evaluate(snippet(source))
    assert isinstance(result, EvaluationResult)
    assert result.rendered == _gojsonnet.evaluate_snippet("main.jsonnet", source).encode()
    assert result.worker_pid in pool.worker_pids
    assert result.worker_pid != os.getpid()
    assert result.evaluation_seconds >= 0


async def test_syntax_error_names_the_file_and_line(pool: EvaluatorPool) -> None:
    error = await failure(pool, snippet("{\n  a: 1,\n  b: ,\n}"))
    assert error.reason is Reason.EVALUATION_FAILED
    assert error.message.startswith("syntax error:")
    assert "    main.jsonnet:3:6" in error.message


async def test_runtime_error_names_the_file_and_line(pool: EvaluatorPool) -> None:
    error = await failure(pool, snippet('local x = 1;\n\n{\n  a: error "boom " + x,\n}'))
    assert error.reason is Reason.EVALUATION_FAILED
    assert error.message.splitlines()[0] == "runtime error: boom 1"
    assert "    main.jsonnet:4:6-" in error.message


async def test_imports_across_directories_and_libraries(pool: EvaluatorPool) -> None:
    request = EvaluationRequest(
        "app/main.jsonnet",
        {
            "app/main.jsonnet": b'{cfg: import "cfg/values.libsonnet", g: (import "graf").v}',
            "app/cfg/values.libsonnet": b'{up: import "../../common.libsonnet"}',
            "common.libsonnet": b'"common"',
        },
        libraries={"graf": {"main.libsonnet": b'{v: import "v.libsonnet"}', "v.libsonnet": b"7"}},
    )
    result = await pool.evaluate(request)
    assert result.rendered == b'{\n   "cfg": {\n      "up": "common"\n   },\n   "g": 7\n}\n'


async def test_error_in_a_library_names_alias_and_file(pool: EvaluatorPool) -> None:
    request = EvaluationRequest(
        "main.jsonnet",
        {"main.jsonnet": b'(import "util/bad.libsonnet").f'},
        libraries={"util": {"bad.libsonnet": b'{\n  f: error "lib boom",\n}'}},
    )
    error = await failure(pool, request)
    assert "    util/bad.libsonnet:2:6-" in error.message
    assert "    main.jsonnet:1:" in error.message


async def test_tlas_and_external_variables_as_string_and_code(pool: EvaluatorPool) -> None:
    request = EvaluationRequest(
        "main.jsonnet",
        {
            "main.jsonnet": (
                b"function(name, replicas, extra={})"
                b' {name: name, replicas: replicas, extra: extra, cluster: std.extVar("cluster"),'
                b' limits: std.extVar("limits")}'
            ),
            "limits.libsonnet": b"{cpu: 2}",
        },
        tlas=(
            JsonnetVariable("name", "web"),
            JsonnetVariable("replicas", "1 + 2", code=True),
        ),
        external_variables=(
            JsonnetVariable("cluster", "eu-1"),
            JsonnetVariable("limits", 'import "limits.libsonnet"', code=True),
        ),
    )
    result = await pool.evaluate(request)
    assert result.rendered == (
        b'{\n   "cluster": "eu-1",\n   "extra": { },\n   "limits": {\n      "cpu": 2\n   },\n'
        b'   "name": "web",\n   "replicas": 3\n}\n'
    )


async def test_missing_external_variable(pool: EvaluatorPool) -> None:
    error = await failure(pool, snippet('std.extVar("nope")'))
    assert error.reason is Reason.EVALUATION_FAILED
    assert "nope" in error.message


async def test_endless_evaluation_times_out_without_disturbing_the_other_worker(
    pool: EvaluatorPool,
) -> None:
    await until_full(pool)
    timeouts, restarts = pool.timeouts, pool.restarts
    endless, normal = await asyncio.gather(
        pool.evaluate(snippet(ENDLESS)),
        pool.evaluate(snippet("{ok: true}")),
        return_exceptions=True,
    )
    assert isinstance(endless, ReasonError)
    assert endless.reason is Reason.EVALUATION_TIMEOUT
    assert endless.message == "evaluation exceeded 1s"
    assert isinstance(normal, EvaluationResult)
    assert normal.rendered == b'{\n   "ok": true\n}\n'
    assert pool.timeouts == timeouts + 1
    await until_full(pool)
    assert pool.restarts == restarts + 1
    assert (await pool.evaluate(snippet("1"))).rendered == b"1\n"


async def test_recursive_array_manifestation_fails_and_the_pool_recovers() -> None:
    # Filling 1 GiB takes about a second, more on a busy machine: a pool of its
    # own with a long timeout makes the memory cap, not the clock, stop it.
    async with EvaluatorPool(1, timeout=60.0, memory_limit=1 * GiB, engine="rjsonnet") as roomy:
        error = await failure(roomy, snippet("local f(x) = [f(x)]; f(1)"))
        assert error.reason is Reason.EVALUATION_FAILED
        assert error.message == (
            "the evaluator process exceeded the memory limit of 1 GiB while evaluating main.jsonnet"
        )
        assert roomy.crashes == 1
        assert (await roomy.evaluate(snippet("[1]"))).rendered == b"[\n   1\n]\n"


async def test_ten_thousand_nested_arrays_fail_and_the_pool_recovers() -> None:
    # rjsonnet (on the large evaluation stack) prints 400 MB of 4-space-indented
    # text for this before the depth check or the memory cap stops it: its own
    # pool gives it time, so the outcome does not depend on machine speed.
    async with EvaluatorPool(1, timeout=60.0, memory_limit=1 * GiB) as roomy:
        error = await failure(roomy, snippet(b"[" * 10_000 + b"]" * 10_000))
        assert error.reason is Reason.EVALUATION_FAILED
        assert (await roomy.evaluate(snippet("{}"))).rendered == b"{ }\n"


async def test_memory_cap(pool: EvaluatorPool) -> None:
    error = await failure(pool, snippet("std.length(std.makeArray(50000000, function(i) i))"))
    assert error.reason is Reason.EVALUATION_FAILED
    assert "exceeded the memory limit of 1 GiB" in error.message
    assert (await pool.evaluate(snippet("2"))).rendered == b"2\n"


@pytest.mark.parametrize("engine", ["jrsonnet", "go-jsonnet"])
async def test_every_engine_names_the_memory_cap_it_ran_into(engine: str) -> None:
    # Go's runtime writes "fatal error: runtime: cannot allocate memory" first
    # and a dump of every goroutine after it: the pool sees the sign as it is
    # written, not only in the tail it keeps.
    bomb = "local a = std.makeArray(50000000, function(i) 'x%d' % i); std.length(std.join(',', a))"
    async with EvaluatorPool(
        1, timeout=60.0, memory_limit=defaults.EVALUATION_MEMORY_LIMIT, engine=engine
    ) as capped:
        error = await failure(capped, snippet(bomb))
        assert error.message == (
            "the evaluator process exceeded the memory limit of 2 GiB while evaluating main.jsonnet"
        )
        assert (await capped.evaluate(snippet("2"))).rendered == b"2\n"


@pytest.mark.parametrize("source", ["std.log(0)", "[std.exp(1000)]", "{a: -std.exp(1000)}"])
async def test_non_finite_output_fails(pool: EvaluatorPool, source: str) -> None:
    error = await failure(pool, snippet(source))
    assert error.reason is Reason.EVALUATION_FAILED
    assert "which is not valid JSON" in error.message


async def test_rjsonnet_panic_fails_and_the_pool_recovers(pool: EvaluatorPool) -> None:
    error = await failure(pool, snippet('std.sort([1, [error "foo"]])'))
    assert error.reason is Reason.EVALUATION_FAILED
    assert "PanicException" in error.message
    assert "main.jsonnet" in error.message
    assert (await pool.evaluate(snippet("'after'"))).rendered == b'"after"\n'


async def test_deep_legitimate_recursion_within_max_stack(pool: EvaluatorPool) -> None:
    deep = "local f(n) = if n == 0 then 0 else 1 + f(n - 1); f(%d)"
    assert (await pool.evaluate(snippet(deep % 450))).rendered == b"450\n"
    error = await failure(pool, snippet(deep % 600))
    assert error.message.startswith("stack overflow")
    frames = error.message.splitlines()[1:]
    assert len(frames) == 21
    assert frames[10] == "    ..."


async def test_output_nested_deeper_than_max_stack_fails_like_go(pool: EvaluatorPool) -> None:
    assert (await pool.evaluate(snippet(b"[" * 500 + b"]" * 500))).rendered.startswith(b"[\n   [")
    error = await failure(pool, snippet(b"[" * 501 + b"]" * 501))
    assert error.message.startswith("max stack frames exceeded")


async def test_idle_worker_killed_from_outside_is_replaced(pool: EvaluatorPool) -> None:
    await until_full(pool)
    victim = pool.worker_pids[0]
    restarts = pool.restarts
    os.kill(victim, signal.SIGKILL)
    await eventually(lambda: victim not in pool.worker_pids and pool.idle == pool.size)
    assert pool.restarts == restarts + 1
    results = await asyncio.gather(*(pool.evaluate(snippet(str(n))) for n in range(4)))
    assert [r.rendered for r in results] == [b"0\n", b"1\n", b"2\n", b"3\n"]


async def test_cancelled_evaluation_replaces_its_worker(pool: EvaluatorPool) -> None:
    await until_full(pool)
    before = set(pool.worker_pids)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await pool.evaluate(snippet(ENDLESS))
    await until_full(pool)
    assert len(before - set(pool.worker_pids)) == 1
    assert (await pool.evaluate(snippet("3"))).rendered == b"3\n"


async def test_requests_queue_for_a_free_worker(pool: EvaluatorPool) -> None:
    results = await asyncio.gather(*(pool.evaluate(snippet(f"[{n}]")) for n in range(12)))
    assert [r.rendered for r in results] == [f"[\n   {n}\n]\n".encode() for n in range(12)]
    assert {r.worker_pid for r in results} <= set(pool.worker_pids)


async def test_segfault_is_reported_plainly() -> None:
    # A 1 MiB evaluation stack and a huge max_stack let deep recursion overflow
    # the native stack, as the default 8 MiB main-thread stack would.
    async with EvaluatorPool(
        1, max_stack=100_000, stack_size=1024 * 1024, engine="rjsonnet"
    ) as small:
        deep = "local f(n) = if n == 0 then 0 else 1 + f(n - 1); f(%d)"
        error = await failure(small, snippet(deep % 20_000))
        assert error.reason is Reason.EVALUATION_FAILED
        assert error.message == (
            "the evaluator process crashed (SIGSEGV) while evaluating main.jsonnet; "
            "deep recursion or deeply nested data can do this"
        )
        assert small.crashes == 1
        assert (await small.evaluate(snippet(deep % 100))).rendered == b"100\n"


async def test_pool_max_stack_applies_to_every_request() -> None:
    async with EvaluatorPool(1, max_stack=100) as shallow:
        deep = "local f(n) = if n == 0 then 0 else 1 + f(n - 1); f(%d)"
        assert (await shallow.evaluate(snippet(deep % 90))).rendered == b"90\n"
        request = EvaluationRequest("main.jsonnet", {"main.jsonnet": (deep % 200).encode()})
        assert request.max_stack == 500
        error = await failure(shallow, request)
        assert error.message.startswith("stack overflow")


async def test_close_kills_workers_and_fails_waiting_requests() -> None:
    closing = EvaluatorPool(1, timeout=None)
    await closing.start()
    pids = closing.worker_pids
    busy = asyncio.create_task(closing.evaluate(snippet(ENDLESS)))
    waiting = asyncio.create_task(closing.evaluate(snippet("1")))
    await asyncio.sleep(0.1)
    await closing.close()
    with pytest.raises(RuntimeError, match=r"closed during the evaluation|not running"):
        await busy
    with pytest.raises(RuntimeError, match="closed"):
        await waiting
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with pytest.raises(RuntimeError, match="not running"):
        await closing.evaluate(snippet("1"))


async def test_memory_limit_too_small_for_the_stack_fails_at_start() -> None:
    with pytest.raises(RuntimeError, match="too small for the evaluation stack"):
        await EvaluatorPool(1, memory_limit=200 * 1024 * 1024).start()


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (5, "5s"),
        (1.5, "1.5s"),
        (0.25, "250ms"),
        (90, "1m30s"),
        (3600, "1h0m0s"),
        (0.0000015, "1.5µs"),
    ],
)
def test_format_duration_like_go(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_format_bytes() -> None:
    assert format_bytes(GiB) == "1 GiB"
    assert format_bytes(3 * GiB // 2) == "1.5 GiB"
    assert format_bytes(512 * 1024 * 1024) == "512 MiB"


async def test_a_malformed_encoded_request_fails_without_killing_the_worker() -> None:
    async with EvaluatorPool(size=1, timeout=5) as pool:
        pids = pool.worker_pids
        with pytest.raises(ReasonError, match="malformed evaluation request") as info:
            await pool.evaluate_frame({"type": "evaluate", "entry_file": "main.jsonnet"}, b"")
        assert info.value.reason is Reason.EVALUATION_FAILED
        assert pool.worker_pids == pids
        ok = await pool.evaluate(
            EvaluationRequest(entry_file="main.jsonnet", files={"main.jsonnet": b"{ a: 1 }"})
        )
        assert ok.rendered == b'{\n   "a": 1\n}\n'


# -- shared libraries (--library-path) ------------------------------------------------


def library_tree(root: Path, files: dict[str, str]) -> Path:
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(content)
    return root


@pytest.fixture(scope="module")
def library_paths(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """``libraries`` then ``libraries-overrides``, as JaaS's precedence example lays them out."""
    base = tmp_path_factory.mktemp("library-paths")
    default = library_tree(
        base / "libraries",
        {
            "examplonet/main.libsonnet": (
                "{resolved_from: 'default', helpers: import 'helpers.libsonnet'}"
            ),
            "examplonet/helpers.libsonnet": "{greet(name): 'hello ' + name}",
            "util/main.libsonnet": "{from: 'shared util'}",
        },
    )
    override = library_tree(
        base / "libraries-overrides",
        {
            "examplonet/main.libsonnet": "{resolved_from: 'override'}",
            "examplonet/helpers.libsonnet": "{greet(name): 'hi ' + name}",
        },
    )
    return [default, override]


@pytest_asyncio.fixture(scope="module")
async def shared_pool(library_paths: list[Path]) -> AsyncIterator[EvaluatorPool]:
    # One worker: after a timeout kill the next request must run on its replacement.
    libraries = load_library_paths(library_paths[:1])
    async with EvaluatorPool(1, timeout=1.0, memory_limit=1 * GiB, shared_libraries=libraries) as p:
        yield p


async def test_shared_libraries_resolve_as_bare_alias_and_alias_slash_file(
    shared_pool: EvaluatorPool,
) -> None:
    assert shared_pool.shared_aliases == {"examplonet", "util"}
    request = snippet(
        "local e = import 'examplonet'; local h = import 'examplonet/helpers.libsonnet';"
        " {from: e.resolved_from, greeting: h.greet('jaas'), nested: e.helpers.greet('x')}"
    )
    result = await shared_pool.evaluate(request)
    assert result.rendered == (
        b'{\n   "from": "default",\n   "greeting": "hello jaas",\n   "nested": "hello x"\n}\n'
    )


async def test_a_snippets_own_library_beats_a_shared_alias_of_the_same_name(
    shared_pool: EvaluatorPool,
) -> None:
    request = EvaluationRequest(
        "main.jsonnet",
        {"main.jsonnet": b"[(import 'util').from, (import 'examplonet').resolved_from]"},
        libraries={"util": {"main.libsonnet": b"{from: 'own util'}"}},
    )
    result = await shared_pool.evaluate(request)
    assert result.rendered == b'[\n   "own util",\n   "default"\n]\n'
    # The whole alias is replaced: the shared util's files are not visible through it.
    error = await failure(
        shared_pool,
        EvaluationRequest(
            "main.jsonnet",
            {"main.jsonnet": b"import 'util'"},
            libraries={"util": {"other.libsonnet": b"{}"}},
        ),
    )
    assert "library util has no main.libsonnet" in error.message
    # And the next request sees the shared util again.
    result = await shared_pool.evaluate(snippet("(import 'util').from"))
    assert result.rendered == b'"shared util"\n'


async def test_a_worker_replaced_after_a_timeout_still_has_the_shared_libraries(
    shared_pool: EvaluatorPool,
) -> None:
    await until_full(shared_pool)
    before = shared_pool.worker_pids
    error = await failure(shared_pool, snippet(ENDLESS))
    assert error.reason is Reason.EVALUATION_TIMEOUT
    await until_full(shared_pool)
    result = await shared_pool.evaluate(
        snippet("(import 'examplonet/helpers.libsonnet').greet('b')")
    )
    assert result.worker_pid not in before
    assert result.rendered == b'"hello b"\n'


async def test_the_right_most_library_path_wins(library_paths: list[Path]) -> None:
    libraries = load_library_paths(library_paths)
    async with EvaluatorPool(1, shared_libraries=libraries) as pool:
        result = await pool.evaluate(
            snippet("{resolved_from: (import 'examplonet').resolved_from}")
        )
        assert result.rendered == b'{\n   "resolved_from": "override"\n}\n'
        greeting = await pool.evaluate(
            snippet("(import 'examplonet/helpers.libsonnet').greet('c')")
        )
        assert greeting.rendered == b'"hi c"\n'
        # Aliases only the left path holds stay available.
        util = await pool.evaluate(snippet("(import 'util').from"))
        assert util.rendered == b'"shared util"\n'


def test_a_shared_library_too_large_for_one_frame_is_refused_at_construction() -> None:
    # A listing over jaas.ipc's 16 MiB header cap: far more files than any real tree.
    huge = {f"{'d' * 100}/{n}.libsonnet": b"" for n in range(170_000)}
    with pytest.raises(ValueError, match="shared library huge is too large"):
        EvaluatorPool(1, shared_libraries={"huge": huge})


# About 30-60 ms of CPU: long enough to keep a worker busy while others queue.
SLOWISH = b"std.foldl(function(a, b) a + b, std.range(1, 100000), 0)"


def labelled(label: str, source: bytes) -> EvaluationRequest:
    return EvaluationRequest("main.jsonnet", {"main.jsonnet": source}, label=label)


async def completion_order(
    pool: EvaluatorPool,
    requests: list[EvaluationRequest],
    queued: Callable[[], None] = lambda: None,
) -> tuple[list[str], list[EvaluationResult | BaseException]]:
    """Submit ``requests`` in order at once; return labels in completion order and outcomes.

    Every request is queued in the same event-loop iteration, before any reply
    can be read, so the order of completions is the order workers were handed
    out, not a race. ``queued`` runs once all of them wait or are in flight.
    """
    completed: list[str] = []

    async def one(request: EvaluationRequest) -> EvaluationResult:
        try:
            return await pool.evaluate(request)
        finally:
            completed.append(request.label)

    tasks = [asyncio.create_task(one(r)) for r in requests]
    await asyncio.sleep(0)  # every task has run up to its wait for a worker
    queued()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    return completed, outcomes


async def test_a_light_tenant_overtakes_a_heavy_tenants_backlog() -> None:
    async with EvaluatorPool(1, timeout=30.0, max_waiting_per_flow=0) as single:
        requests = [labelled(f"heavy/s{n}", SLOWISH) for n in range(20)]
        requests.append(labelled("light/x", b"{}"))
        shapes: list[tuple[int, dict[Hashable, int]]] = []
        completed, outcomes = await completion_order(
            single, requests, lambda: shapes.append((single.busy, single.waiting_by_flow()))
        )
        assert shapes == [(1, {"heavy": 19, "light": 1})]
        assert all(isinstance(o, EvaluationResult) for o in outcomes)
        assert completed[0] == "heavy/s0"  # in flight before light/x arrived
        assert "light/x" in completed[1:3]
        assert single.waiting == 0


async def test_without_flows_the_pool_is_first_come_first_served() -> None:
    async with EvaluatorPool(1, timeout=30.0, flow=None) as fifo:
        requests = [labelled(f"heavy/s{n}", SLOWISH) for n in range(5)]
        requests.append(labelled("light/x", b"{}"))
        completed, _ = await completion_order(fifo, requests)
        assert completed == [r.label for r in requests]


async def test_a_replacement_worker_goes_to_the_next_flow() -> None:
    async with EvaluatorPool(1, timeout=1.0) as single:
        requests = [labelled("heavy/endless", ENDLESS)]
        requests += [labelled(f"heavy/s{n}", SLOWISH) for n in range(5)]
        requests.append(labelled("light/x", b"{}"))
        completed, outcomes = await completion_order(single, requests)
        assert isinstance(outcomes[0], ReasonError)
        assert outcomes[0].reason is Reason.EVALUATION_TIMEOUT
        assert all(isinstance(o, EvaluationResult) for o in outcomes[1:])
        assert single.restarts == 1
        assert completed[0] == "heavy/endless"
        assert "light/x" in completed[1:3]


async def test_requests_without_a_label_share_one_flow() -> None:
    async with EvaluatorPool(1, timeout=30.0) as single:
        busy = asyncio.create_task(single.evaluate(labelled("heavy/s0", SLOWISH)))
        unlabelled = [asyncio.create_task(single.evaluate(labelled("", b"1"))) for _ in range(3)]
        await asyncio.sleep(0)
        assert single.waiting_by_flow() == {"": 3}
        await asyncio.gather(busy, *unlabelled)


async def test_a_cancelled_waiter_leaves_its_flow_and_the_others_are_served() -> None:
    async with EvaluatorPool(1, timeout=30.0) as single:
        busy = asyncio.create_task(single.evaluate(labelled("heavy/s0", SLOWISH)))
        first = asyncio.create_task(single.evaluate(labelled("light/a", b"1")))
        second = asyncio.create_task(single.evaluate(labelled("light/b", b"2")))
        await asyncio.sleep(0)
        assert single.waiting_by_flow() == {"light": 2}
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert single.waiting_by_flow() == {"light": 1}
        assert (await second).rendered == b"2\n"
        await busy
        assert single.waiting == 0
        assert single.idle == 1
        assert single.evaluations == 2


async def test_an_output_over_the_callers_cap_is_refused_in_the_evaluator(
    pool: EvaluatorPool,
) -> None:
    program = "std.join('', std.makeArray(1000, function(i) 'x'))"  # 1,003 bytes manifested
    capped = dataclasses.replace(snippet(program), max_output_bytes=1000)
    error = await failure(pool, capped)
    assert error.reason is Reason.ARTIFACT_TOO_LARGE
    assert error.message == "rendered.json would be 1003 bytes, over the 1000-byte limit"
    roomy = dataclasses.replace(snippet(program), max_output_bytes=1003)
    assert len((await pool.evaluate(roomy)).rendered) == 1003


async def test_a_discarded_output_is_measured_but_not_sent(pool: EvaluatorPool) -> None:
    program = "std.join('', std.makeArray(1000, function(i) 'x'))"
    result = await pool.evaluate(dataclasses.replace(snippet(program), discard_output=True))
    assert result.rendered == b""
    assert result.consumer_files == {}
    assert result.size == 1003
    failed = dataclasses.replace(snippet("error 'no'"), discard_output=True)
    assert (await failure(pool, failed)).reason is Reason.EVALUATION_FAILED


async def test_the_result_carries_the_files_for_kustomize_and_is_returned_encoded(
    pool: EvaluatorPool,
) -> None:
    program = "{apiVersion: 'v1', kind: 'ConfigMap', metadata: {name: 'x'}, data: {n: '1'}}"
    result = await pool.evaluate(snippet(program))
    assert sorted(result.consumer_files) == ["kustomization.yaml", "objects.yaml"]
    assert result.objects_summary == "1 Kubernetes object"
    # evaluate_frame returns the worker's frame as received, for the leader to relay.
    header, payload = await pool.evaluate_frame(*snippet(program).to_frame())
    assert header["type"] == "result"
    assert header["files"] == [[name, len(c)] for name, c in result.consumer_files.items()]
    assert payload == result.rendered + b"".join(result.consumer_files.values())
    assert EvaluationResult.from_frame(header, payload).consumer_files == result.consumer_files


async def stop_while_evaluating(pool: EvaluatorPool, pause: float) -> EvaluationResult:
    """Evaluate a ~0.7 s program on a one-worker pool, SIGSTOPping it for ``pause`` s meanwhile.

    The pool needs the operator's 2 GiB memory limit: the evaluation thread's
    stack and jaas-jrsonnet's own large-stack thread leave a 1 GiB address
    space too little room for this fold now and then.
    """
    await until_full(pool)
    (worker,) = pool.worker_pids
    evaluation = asyncio.ensure_future(
        pool.evaluate(snippet("std.foldl(function(a, b) a + b, std.range(1, 3000000), 0)"))
    )
    await eventually(lambda: pool.busy == 1)
    os.kill(worker, signal.SIGSTOP)
    await asyncio.sleep(pause)
    with contextlib.suppress(ProcessLookupError):  # killed meanwhile: the wall clock ran out
        os.kill(worker, signal.SIGCONT)
    return await evaluation


async def test_the_timeout_counts_cpu_time_not_time_spent_stopped() -> None:
    async with EvaluatorPool(
        1, timeout=2.0, memory_limit=defaults.EVALUATION_MEMORY_LIMIT
    ) as single:
        result = await stop_while_evaluating(single, pause=3.0)  # past 2 s of wall clock
    assert result.rendered == b"4500001500000\n"
    assert single.timeouts == 0


async def test_a_worker_that_makes_no_progress_is_stopped_by_the_wall_clock() -> None:
    async with EvaluatorPool(
        1, timeout=1.0, memory_limit=defaults.EVALUATION_MEMORY_LIMIT
    ) as single:
        with pytest.raises(ReasonError) as caught:
            await stop_while_evaluating(single, pause=5.0)  # past 4 × the timeout
    assert caught.value.reason is Reason.EVALUATION_TIMEOUT
    assert caught.value.message == (
        "evaluation exceeded 1s: no result after 4s of wall-clock time (4 × --evaluation-timeout)"
    )


async def test_a_full_queue_answers_busy_per_namespace_and_in_all() -> None:
    slow = "std.foldl(function(a, b) a + b, std.range(1, 3000000), 0)"

    def request(namespace: str) -> EvaluationRequest:
        return dataclasses.replace(snippet(slow), label=f"{namespace}/s")

    # The operator's memory limit: under 1 GiB of address space jrsonnet's
    # growing stack segments for this fold sometimes run out.
    async with EvaluatorPool(
        1,
        timeout=30.0,
        memory_limit=defaults.EVALUATION_MEMORY_LIMIT,
        max_waiting=2,
        max_waiting_per_flow=1,
    ) as single:
        await until_full(single)
        running = asyncio.ensure_future(single.evaluate(request("a")))
        await eventually(lambda: single.busy == 1)
        waiting_a = asyncio.ensure_future(single.evaluate(request("a")))
        await eventually(lambda: single.waiting == 1)
        with pytest.raises(EvaluatorBusy, match="1 requests of this namespace"):
            await single.evaluate(request("a"))  # its namespace's place is taken
        waiting_b = asyncio.ensure_future(single.evaluate(request("b")))
        await eventually(lambda: single.waiting == 2)
        with pytest.raises(EvaluatorBusy, match=r"\(2 in all\)"):
            await single.evaluate(request("c"))  # the whole queue is full
        results = await asyncio.gather(running, waiting_a, waiting_b)
        assert {r.rendered for r in results} == {b"4500001500000\n"}
        assert single.refused == 2


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ("local f(x) = [f(x)]; f(1)", "stack overflow"),
        ('std.sort([1, [error "foo"]])', "binary operation array < number is not implemented"),
        ("std.log(0)", "non-finite"),
        ("local f(n) = if n == 0 then 0 else 1 + f(n - 1); f(20000)", "stack overflow"),
    ],
)
async def test_jrsonnet_answers_cleanly_where_rjsonnet_crashes(source: str, says: str) -> None:
    async with EvaluatorPool(1, timeout=30.0, memory_limit=1 * GiB, engine="jrsonnet") as ours:
        error = await failure(ours, snippet(source))
        assert error.reason is Reason.EVALUATION_FAILED
        assert says in error.message
        assert "main.jsonnet" in error.message or says == "stack overflow"
        assert ours.crashes == 0


def test_a_worker_without_room_for_another_evaluation_retires() -> None:
    # The worker's retire check over a scripted address space (MiB figures):
    # 300 kept and a self-test that peaked 512 higher.
    mib = 2**20
    sizes = [(300 * mib, 812 * mib)]

    def measure() -> tuple[int, int]:
        return sizes[-1]

    assert not AddressSpace(0, measure).exhausted()  # no limit: never
    room = AddressSpace(1024 * mib, measure)
    assert room.transient == 512 * mib
    assert not room.exhausted()  # 300 + 512 + 64 <= 1024
    sizes.append((448 * mib, 1000 * mib))  # 148 MiB of heap left behind
    assert not room.exhausted()
    sizes.append((448 * mib + 1, 1000 * mib))
    assert room.exhausted()  # the next evaluation would have less than 64 MiB
    assert not AddressSpace(2048 * mib, measure).exhausted()
    assert AddressSpace(1024 * mib).transient >= 0  # this process, measured for real
