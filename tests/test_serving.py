"""The recommendation service over real gRPC on 127.0.0.1 (ephemeral port): every RPC, health, reflection,
cold start, live updates, hot reload and every bad input of issue 5."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from client.serving.bootstrap import RunningRecommender, open_recommender
from client.serving.interaction_log import ADDED_ITEMS_FILE, INTERACTIONS_FILE, read_records
from client.serving.model_bundle import ModelLoadError
from client.serving.service import SERVICE_NAME, RunningServer, start_server
from shared.atomic import write_atomic
from shared.proto import recommend_pb2 as pb
from shared.proto import recommend_pb2_grpc as pb_grpc
from tests.conftest import TINY_ITEMS
from tests.serving_fixtures import (
    HashingEmbedder,
    TinyRun,
    fast_settings,
    make_tiny_run,
    open_tiny,
    write_model,
)

MAX_K = 20
RELOAD_CLIENTS = 4
SLOW_ENCODE_S = 1.5


@dataclass
class Served:
    run: TinyRun
    running: RunningRecommender
    stub: pb_grpc.RecommenderStub
    channel: grpc.Channel


def _serve(run: TinyRun) -> tuple[Served, RunningServer]:
    running = open_tiny(run, max_k=MAX_K)
    server = start_server(running.recommender, fast_settings(max_k=MAX_K), str(run.run_dir))
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    return Served(run, running, pb_grpc.RecommenderStub(channel), channel), server


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    handle, server = _serve(make_tiny_run(tmp_path))
    yield handle
    handle.channel.close()
    server.stop(grace=None)


def _code(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as raised:
        call()  # type: ignore[operator]
    return raised.value.code(), raised.value.details()


def _wait_for(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def _ids(reply: pb.RecommendReply | pb.ItemList) -> list[str]:
    return [item.item_id for item in reply.items]


# -- health and reflection --------------------------------------------------------------------------------
def test_health_reports_serving_for_the_server_and_the_service(served: Served) -> None:
    health = health_pb2_grpc.HealthStub(served.channel)
    for service in ("", SERVICE_NAME):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_what_the_server_built_at_start_is_out_of_the_collectors_sight(served: Served) -> None:
    """A full collection walking the start-up heap paused a 100k-item server for ~130 ms under load."""
    import gc

    recommender = served.running.recommender
    assert gc.get_freeze_count() > 0 and gc.is_tracked(recommender)
    assert not any(obj is recommender for generation in range(3) for obj in gc.get_objects(generation))


def test_reflection_lists_the_recommender_service(served: Served) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(served.channel)
    replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert {"fedrec.v1.Recommender", "grpc.health.v1.Health"} <= names


# -- Recommend ----------------------------------------------------------------------------------------------
def test_known_user_gets_k_unseen_personal_items(served: Served) -> None:
    user = served.run.store_users[0]
    reply = served.stub.Recommend(pb.RecommendRequest(user_id=user, k=5))
    seen = set(served.running.recommender._history[user])
    assert len(reply.items) == 5 and not reply.cold_start
    assert not {served.running.recommender.items.index[i] for i in _ids(reply)} & seen
    scores = [item.score for item in reply.items]
    assert scores == sorted(scores, reverse=True)


def test_exclude_seen_false_allows_past_items(served: Served) -> None:
    user = served.run.store_users[0]
    recommender = served.running.recommender
    reply = served.stub.Recommend(pb.RecommendRequest(user_id=user, k=MAX_K, exclude_seen=False))
    full = recommender.recommend(user, MAX_K, exclude_seen=False)
    assert _ids(reply) == [item.item_id for item in full.items]
    assert set(_ids(reply)) & {recommender.items.ids[r] for r in recommender._history[user]}


def test_explanations_name_the_users_past_items(served: Served) -> None:
    user = served.run.store_users[1]
    reply = served.stub.Recommend(pb.RecommendRequest(user_id=user, k=4, explain=True))
    history = {served.running.recommender.items.ids[r] for r in served.running.recommender._history[user]}
    for item in reply.items:
        assert len(item.because) == 2 and set(item.because) <= history


def test_diversity_lowers_the_similarity_within_the_list(served: Served) -> None:
    recommender = served.running.recommender
    unit = recommender.snapshot.space.unit.view()
    user = served.run.store_users[2]

    def mean_similarity(diversity: float) -> float:
        reply = served.stub.Recommend(pb.RecommendRequest(user_id=user, k=8, diversity=diversity))
        rows = [recommender.items.index[i] for i in _ids(reply)]
        similarity = unit[rows] @ unit[rows].T
        return float(similarity[~np.eye(len(rows), dtype=bool)].mean())

    assert mean_similarity(1.0) < mean_similarity(0.0)


def test_unknown_user_gets_the_popular_items_flagged_cold_start(served: Served) -> None:
    reply = served.stub.Recommend(pb.RecommendRequest(user_id="never-seen", k=3))
    popularity = served.running.recommender.items.popularity.view()
    assert reply.cold_start and "popular" in reply.cold_start_reason
    assert [served.running.recommender.items.index[i] for i in _ids(reply)] == \
        np.argsort(-popularity, kind="stable")[:3].tolist()


def test_unknown_user_with_a_click_gets_vectors_fitted_from_it(served: Served) -> None:
    served.stub.RecordInteraction(pb.InteractionRequest(user_id="newcomer", item_id="7"))
    reply = served.stub.Recommend(pb.RecommendRequest(user_id="newcomer", k=3))
    assert reply.cold_start and "fitted from 1 logged clicks" in reply.cold_start_reason
    assert "7" not in _ids(reply)


# -- SimilarItems, RecommendForText -------------------------------------------------------------------------
def test_similar_items_are_the_nearest_other_items(served: Served) -> None:
    reply = served.stub.SimilarItems(pb.SimilarItemsRequest(item_id="3", k=5))
    scores = [item.score for item in reply.items]
    assert len(scores) == 5 and "3" not in _ids(reply) and scores == sorted(scores, reverse=True)
    assert all(-1.0 <= s <= 1.0 + 1e-6 for s in scores)


def test_recommend_for_text_ranks_by_the_query(served: Served) -> None:
    first = served.stub.RecommendForText(pb.TextRequest(query="item 7 action comedy", k=10))
    again = served.stub.RecommendForText(pb.TextRequest(query="item 7 action comedy", k=10))
    other = served.stub.RecommendForText(pb.TextRequest(query="drama drama drama 99", k=10))
    scores = [item.score for item in first.items]
    assert len(scores) == 10 and scores == sorted(scores, reverse=True)
    assert _ids(first) == _ids(again) and _ids(first) != _ids(other)


# -- AddItem, RecordInteraction ---------------------------------------------------------------------------
def test_added_item_is_servable_at_once(served: Served) -> None:
    before = served.running.recommender.info().catalog_size
    reply = served.stub.AddItem(pb.AddItemRequest(item_id="lamp", text="Desk lamp", categories=["Home"]))
    assert reply.catalog_size == before + 1 and not reply.text_truncated
    assert len(served.stub.SimilarItems(pb.SimilarItemsRequest(item_id="lamp", k=3)).items) == 3
    assert served.stub.RecordInteraction(pb.InteractionRequest(user_id="u", item_id="lamp")).logged
    everything = served.stub.Recommend(pb.RecommendRequest(user_id=served.run.store_users[0], k=MAX_K,
                                                           exclude_seen=False))
    assert len(everything.items) == MAX_K  # the catalog (121 items) is scored whole, the new item included


def test_a_click_changes_the_next_recommendation(served: Served) -> None:
    user = served.run.store_users[3]
    before = served.stub.Recommend(pb.RecommendRequest(user_id=user, k=MAX_K))
    clicked = _ids(before)[-1]
    reply = served.stub.RecordInteraction(pb.InteractionRequest(user_id=user, item_id=clicked,
                                                                timestamp=1_700_000_000))
    after = served.stub.Recommend(pb.RecommendRequest(user_id=user, k=MAX_K))
    assert reply.logged and reply.refreshed
    assert clicked not in _ids(after)  # now seen
    assert [i.score for i in after.items] != [i.score for i in before.items]  # the user's vectors moved


def test_concurrent_clicks_lose_nothing(served: Served) -> None:
    threads, per_thread = 8, 10

    def click(worker: int) -> None:
        for n in range(per_thread):
            served.stub.RecordInteraction(pb.InteractionRequest(user_id=f"w{worker}", item_id=str(n)))

    pool = [threading.Thread(target=click, args=(w,)) for w in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    records = list(read_records(served.run.state_dir / INTERACTIONS_FILE))
    assert len(records) == threads * per_thread
    assert {(r["user_id"], r["item_id"]) for r in records} == \
        {(f"w{w}", str(n)) for w in range(threads) for n in range(per_thread)}


def test_clicks_and_added_items_survive_a_restart(tmp_path: Path) -> None:
    handle, server = _serve(make_tiny_run(tmp_path))
    handle.stub.AddItem(pb.AddItemRequest(item_id="tent", text="Two-person tent", categories=["Outdoor"]))
    handle.stub.RecordInteraction(pb.InteractionRequest(user_id="hiker", item_id="tent"))
    handle.channel.close()
    server.stop(grace=None)
    again, server = _serve(handle.run)
    try:
        reply = again.stub.Recommend(pb.RecommendRequest(user_id="hiker", k=3))
        assert "fitted from 1 logged clicks" in reply.cold_start_reason
        assert again.stub.SimilarItems(pb.SimilarItemsRequest(item_id="tent", k=1)).items
        assert [r["item_id"] for r in read_records(handle.run.state_dir / ADDED_ITEMS_FILE)] == ["tent"]
    finally:
        again.channel.close()
        server.stop(grace=None)


# -- hot reload -------------------------------------------------------------------------------------------
def test_hot_reload_under_concurrent_requests_fails_no_request(served: Served) -> None:
    old = served.stub.ModelInfo(pb.ModelInfoRequest()).model_version
    failures: list[BaseException] = []
    versions: set[str] = set()
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            try:
                reply = served.stub.Recommend(pb.RecommendRequest(user_id=served.run.store_users[0], k=5))
                versions.add(reply.model_version)
                assert len(reply.items) == 5
            except BaseException as exc:
                failures.append(exc)

    clients = [threading.Thread(target=hammer) for _ in range(RELOAD_CLIENTS)]
    for client in clients:
        client.start()
    _wait_for(lambda: old in versions)
    for seed in (11, 12, 13):
        write_model(served.run, seed)
        assert served.running.reload_now()
    newest = served.running.recommender.info().model_version
    _wait_for(lambda: newest in versions)
    stop.set()
    for client in clients:
        client.join()
    new = served.stub.ModelInfo(pb.ModelInfoRequest())
    assert failures == []
    assert new.model_version != old and new.last_reload_error == ""
    assert old in versions and len(versions) >= 2


def test_a_model_that_fails_to_load_is_reported_and_the_old_one_kept(served: Served) -> None:
    old = served.stub.ModelInfo(pb.ModelInfoRequest()).model_version
    write_atomic(served.run.run_dir / "model.npz", lambda fh: fh.write(b"not an npz"))
    with pytest.raises(ModelLoadError):
        served.running.reload_now()
    info = served.stub.ModelInfo(pb.ModelInfoRequest())
    assert info.model_version == old and "model.npz: not an .npz file" in info.last_reload_error
    assert len(served.stub.Recommend(pb.RecommendRequest(user_id="anyone", k=2)).items) == 2


def test_model_info_says_how_candidates_are_retrieved(served: Served, tmp_path: Path) -> None:
    exact = served.stub.ModelInfo(pb.ModelInfoRequest())
    assert exact.ann_probes == exact.ann_clusters == 0 and not exact.HasField("ann_recall_at_10")
    run = make_tiny_run(tmp_path / "ann")
    settings = {"max_k": 10, "candidates": 20, "score_all_below": 0, "ann_min_items": 1}
    running = open_tiny(run, **settings)
    server = start_server(running.recommender, fast_settings(**settings), str(run.run_dir))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            info = pb_grpc.RecommenderStub(channel).ModelInfo(pb.ModelInfoRequest())
    finally:
        server.stop(grace=None)
    width = running.recommender.snapshot.index.width
    assert width is not None and width.recall_at_10 is not None
    assert 1 <= info.ann_probes == width.probes <= info.ann_clusters == width.clusters
    assert info.ann_recall_at_10 == pytest.approx(width.recall_at_10) and width.recall_at_10 >= 0.97


# -- bad input --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [0, -1, MAX_K + 1])
def test_k_out_of_range_is_invalid_argument_naming_k(served: Served, k: int) -> None:
    for call in (lambda: served.stub.Recommend(pb.RecommendRequest(user_id="u", k=k)),
                 lambda: served.stub.SimilarItems(pb.SimilarItemsRequest(item_id="1", k=k)),
                 lambda: served.stub.RecommendForText(pb.TextRequest(query="x", k=k))):
        code, details = _code(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("k:")


@pytest.mark.parametrize("diversity", [-0.1, 1.5, float("nan")])
def test_diversity_out_of_range_is_invalid_argument(served: Served, diversity: float) -> None:
    code, details = _code(lambda: served.stub.Recommend(pb.RecommendRequest(user_id="u", k=2,
                                                                             diversity=diversity)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("diversity:")


def test_unknown_items_are_not_found(served: Served) -> None:
    for call in (lambda: served.stub.SimilarItems(pb.SimilarItemsRequest(item_id="nope", k=2)),
                 lambda: served.stub.RecordInteraction(pb.InteractionRequest(user_id="u", item_id="nope"))):
        code, details = _code(call)
        assert code == grpc.StatusCode.NOT_FOUND and "nope" in details


def test_empty_text_is_invalid_argument_naming_the_field(served: Served) -> None:
    code, details = _code(lambda: served.stub.RecommendForText(pb.TextRequest(query="  ", k=2)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("query:")
    code, details = _code(lambda: served.stub.AddItem(pb.AddItemRequest(item_id="x", text="")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("text:")


def test_huge_text_is_truncated_not_a_crash(served: Served) -> None:
    huge = "word " * 200_000  # 1 MB
    reply = served.stub.AddItem(pb.AddItemRequest(item_id="big", text=huge))
    assert reply.text_truncated
    assert len(served.stub.RecommendForText(pb.TextRequest(query=huge, k=2)).items) == 2


def test_adding_an_existing_item_is_already_exists(served: Served) -> None:
    code, _ = _code(lambda: served.stub.AddItem(pb.AddItemRequest(item_id="1", text="dup")))
    assert code == grpc.StatusCode.ALREADY_EXISTS


def test_missing_user_id_is_invalid_argument(served: Served) -> None:
    code, details = _code(lambda: served.stub.Recommend(pb.RecommendRequest(k=2)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("user_id:")


def test_a_malformed_model_file_at_start_up_is_named(tmp_path: Path) -> None:
    run = make_tiny_run(tmp_path)
    buffer = io.BytesIO()
    np.savez(buffer, unrelated=np.zeros(3))
    write_atomic(run.run_dir / "model.npz", lambda fh: fh.write(buffer.getvalue()))
    with pytest.raises(ModelLoadError, match=r"model\.npz.*missing"):
        open_tiny(run)


def test_a_broken_config_at_start_up_is_named(tmp_path: Path) -> None:
    run = make_tiny_run(tmp_path)
    (run.run_dir / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"config\.json"):
        open_tiny(run)


def test_missing_store_embeddings_at_start_up_are_named(tmp_path: Path) -> None:
    run = make_tiny_run(tmp_path)
    (run.state_dir / "user_embeddings.npz").unlink()
    with pytest.raises(ModelLoadError, match=r"user_embeddings\.npz"):
        open_tiny(run)


def test_the_ann_path_recommends_like_exact_retrieval_and_serves_added_items(tmp_path: Path) -> None:
    run = make_tiny_run(tmp_path)
    # every cluster probed: the index then searches exactly what exact retrieval does, through its own lists
    small = {"max_k": 10, "candidates": 40, "ann_probes": TINY_ITEMS, "score_all_below": 0}
    ann = open_tiny(run, ann_min_items=1, **small).recommender
    exact = open_tiny(run, **small).recommender
    assert type(ann.snapshot.index).__name__ == "ClusterIndex"
    assert type(exact.snapshot.index).__name__ == "ExactIndex"
    for user in run.store_users[:5]:
        assert [i.item_id for i in ann.recommend(user, 10).items] == \
            [i.item_id for i in exact.recommend(user, 10).items]
    size, _ = ann.add_item("fresh", "Item 3 Action Comedy")
    assert size == len(ann.items) and ann.similar_items("fresh", 1)[0]


# -- concurrency ------------------------------------------------------------------------------------------
class SlowEmbedder(HashingEmbedder):
    """Encoding that takes ``delay`` seconds: stands for MiniLM on a busy machine."""

    delay = 0.0

    def encode(self, texts):  # type: ignore[no-untyped-def]
        time.sleep(self.delay)
        return super().encode(texts)


def test_a_slow_add_item_does_not_hold_up_recommendations(tmp_path: Path) -> None:
    run = make_tiny_run(tmp_path)
    embedder = SlowEmbedder()
    running = open_recommender(run.run_dir, run.state_dir, fast_settings(max_k=MAX_K), embedder)
    server = start_server(running.recommender, fast_settings(max_k=MAX_K), str(run.run_dir))
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    stub = pb_grpc.RecommenderStub(channel)
    try:
        request = pb.RecommendRequest(user_id=run.store_users[0], k=3)
        stub.Recommend(request)
        embedder.delay = SLOW_ENCODE_S
        adding = stub.AddItem.future(pb.AddItemRequest(item_id="slow", text="A slowly encoded item"))
        time.sleep(0.1)  # the AddItem is now encoding on the worker pool
        started = time.perf_counter()
        replies = [stub.Recommend(request, timeout=SLOW_ENCODE_S) for _ in range(5)]
        waited = time.perf_counter() - started
        # answered while the add was still encoding
        assert not adding.done() and waited < SLOW_ENCODE_S / 2
        assert all(len(reply.items) == 3 for reply in replies)
        assert adding.result(timeout=10).item_id == "slow"
    finally:
        channel.close()
        server.stop(grace=None)
