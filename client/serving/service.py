"""The gRPC front end: ``fedrec.v1.Recommender`` (shared/proto/recommend.proto), grpc health checking and
server reflection, over a ``Recommender`` (engine.py). This module only translates: requests in, replies or
status codes out (``ServingError.code`` -> ``grpc.StatusCode``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent import futures
from typing import TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from client.serving.engine import Recommendation, Recommender, ServingError
from client.serving.settings import ServeSettings
from shared.proto import recommend_pb2, recommend_pb2_grpc

SERVICE_NAME = recommend_pb2.DESCRIPTOR.services_by_name["Recommender"].full_name

log = logging.getLogger(__name__)
Reply = TypeVar("Reply")


def _items(items: list[Recommendation]) -> list[recommend_pb2.RecommendedItem]:
    return [recommend_pb2.RecommendedItem(item_id=i.item_id, title=i.title, score=i.score,
                                          because=list(i.because)) for i in items]


def _answer(context: grpc.ServicerContext, call: Callable[[], Reply]) -> Reply:
    try:
        return call()
    except ServingError as exc:
        context.abort(getattr(grpc.StatusCode, exc.code), str(exc))
        raise  # unreachable: abort raises


class RecommenderService(recommend_pb2_grpc.RecommenderServicer):
    def __init__(self, recommender: Recommender, run_dir: str = "") -> None:
        self.recommender = recommender
        self.run_dir = run_dir

    def Recommend(self, request: recommend_pb2.RecommendRequest, context: grpc.ServicerContext
                  ) -> recommend_pb2.RecommendReply:
        def call() -> recommend_pb2.RecommendReply:
            exclude = request.exclude_seen if request.HasField("exclude_seen") else True
            result = self.recommender.recommend(request.user_id, request.k, exclude, request.diversity,
                                                request.explain)
            return recommend_pb2.RecommendReply(items=_items(result.items), cold_start=result.cold_start,
                                                cold_start_reason=result.cold_start_reason,
                                                model_version=result.model_version)
        return _answer(context, call)

    def SimilarItems(self, request: recommend_pb2.SimilarItemsRequest, context: grpc.ServicerContext
                     ) -> recommend_pb2.ItemList:
        def call() -> recommend_pb2.ItemList:
            items, version = self.recommender.similar_items(request.item_id, request.k)
            return recommend_pb2.ItemList(items=_items(items), model_version=version)
        return _answer(context, call)

    def RecommendForText(self, request: recommend_pb2.TextRequest, context: grpc.ServicerContext
                         ) -> recommend_pb2.ItemList:
        def call() -> recommend_pb2.ItemList:
            items, version = self.recommender.recommend_for_text(request.query, request.k)
            return recommend_pb2.ItemList(items=_items(items), model_version=version)
        return _answer(context, call)

    def AddItem(self, request: recommend_pb2.AddItemRequest, context: grpc.ServicerContext
                ) -> recommend_pb2.AddItemReply:
        def call() -> recommend_pb2.AddItemReply:
            size, truncated = self.recommender.add_item(request.item_id, request.text,
                                                        list(request.categories))
            return recommend_pb2.AddItemReply(item_id=request.item_id, catalog_size=size,
                                              text_truncated=truncated)
        return _answer(context, call)

    def RecordInteraction(self, request: recommend_pb2.InteractionRequest, context: grpc.ServicerContext
                          ) -> recommend_pb2.InteractionReply:
        def call() -> recommend_pb2.InteractionReply:
            result = self.recommender.record_interaction(request.user_id, request.item_id, request.timestamp)
            return recommend_pb2.InteractionReply(logged=True, refreshed=result.refreshed,
                                                  user_interactions=result.user_interactions)
        return _answer(context, call)

    def ModelInfo(self, request: recommend_pb2.ModelInfoRequest, context: grpc.ServicerContext
                  ) -> recommend_pb2.ModelInfoReply:
        info = self.recommender.info()
        return recommend_pb2.ModelInfoReply(
            model_version=info.model_version, run_dir=self.run_dir, catalog_size=info.catalog_size,
            known_users=info.known_users, last_reload_error=info.last_reload_error, loaded_at=info.loaded_at)


def start_server(recommender: Recommender, settings: ServeSettings, run_dir: str = ""
                 ) -> tuple[grpc.Server, int]:
    """Start serving on ``settings.host:settings.port``; returns the server and the bound port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=settings.workers,
                                                    thread_name_prefix="fedrec-serve"))
    recommend_pb2_grpc.add_RecommenderServicer_to_server(RecommenderService(recommender, run_dir), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server)
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    if port == 0:
        raise OSError(f"cannot bind {settings.host}:{settings.port}")
    server.start()
    log.info("fedrec.v1.Recommender listening on %s:%d", settings.host, port)
    return server, port
