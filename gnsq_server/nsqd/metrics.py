"""``GET /metrics``: gnsqd's state in the Prometheus exposition format (a gnsq extra).

Built with the ``prometheus_client`` library: a collector turns one ``stats.snapshot`` per scrape
into metric families on a private registry (no process-global state, no default collectors), and
the library writes the text format (0.0.4 / 1.0.0, or OpenMetrics when the scraper asks for it),
so escaping and ``_total`` suffixes follow the spec. Counters are nsqd's cumulative counts (they
restart at 0 with the daemon); e2e latency quantiles are gauges in seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from . import stats

_TOPIC = ["topic"]
_CHANNEL = ["topic", "channel"]
_CLIENT = ["topic", "channel", "client_id", "hostname", "remote_address", "user_agent"]
_PRODUCER = ["topic", "client_id", "hostname", "remote_address", "user_agent"]
_NS = 1e9


def _e2e(family: GaugeMetricFamily, labels: list[str], e2e: dict) -> None:
    for item in e2e.get("percentiles") or ():
        family.add_metric([*labels, str(item["quantile"])], item["value"] / _NS)


class NSQDCollector:
    """A ``prometheus_client`` collector over one NSQD (read on every scrape)."""

    def __init__(self, nsqd: Any, e2e: stats.E2ESource = stats.empty_e2e) -> None:
        self.nsqd = nsqd
        self.e2e = e2e

    def collect(self) -> Iterator[Metric]:
        doc = stats.snapshot(self.nsqd, include_mem=False, e2e=self.e2e)
        g, c = GaugeMetricFamily, CounterMetricFamily
        up = g("nsq_healthy", "1 when nsqd is healthy (the /ping body is OK), else 0")
        up.add_metric([], 1.0 if doc["health"] == "OK" else 0.0)
        start = g("nsq_start_time_seconds", "when this nsqd started, in unix seconds")
        start.add_metric([], doc["start_time"])
        topic_msgs = c("nsq_topic_messages", "messages published to the topic", labels=_TOPIC)
        topic_bytes = c("nsq_topic_message_bytes", "bytes published to the topic", labels=_TOPIC)
        topic_depth = g("nsq_topic_depth", "messages queued in the topic (memory + disk)",
                        labels=_TOPIC)
        topic_backend = g("nsq_topic_backend_depth", "messages queued on disk", labels=_TOPIC)
        topic_paused = g("nsq_topic_paused", "1 when the topic is paused", labels=_TOPIC)
        topic_e2e = g("nsq_topic_e2e_processing_latency_seconds",
                      "end-to-end processing latency quantiles over the window",
                      labels=[*_TOPIC, "quantile"])
        ch_msgs = c("nsq_channel_messages", "messages handed to the channel", labels=_CHANNEL)
        ch_requeued = c("nsq_channel_requeued", "messages requeued (REQ)", labels=_CHANNEL)
        ch_timed_out = c("nsq_channel_timed_out", "messages that timed out in flight",
                         labels=_CHANNEL)
        ch_depth = g("nsq_channel_depth", "messages queued (memory + disk)", labels=_CHANNEL)
        ch_backend = g("nsq_channel_backend_depth", "messages queued on disk", labels=_CHANNEL)
        ch_in_flight = g("nsq_channel_in_flight", "messages in flight", labels=_CHANNEL)
        ch_deferred = g("nsq_channel_deferred", "deferred messages", labels=_CHANNEL)
        ch_clients = g("nsq_channel_clients", "connected consumers", labels=_CHANNEL)
        ch_paused = g("nsq_channel_paused", "1 when the channel is paused", labels=_CHANNEL)
        ch_e2e = g("nsq_channel_e2e_processing_latency_seconds",
                   "end-to-end processing latency quantiles over the window",
                   labels=[*_CHANNEL, "quantile"])
        cl_msgs = c("nsq_client_messages", "messages sent to the consumer", labels=_CLIENT)
        cl_finished = c("nsq_client_finished", "messages the consumer finished", labels=_CLIENT)
        cl_requeued = c("nsq_client_requeued", "messages the consumer requeued", labels=_CLIENT)
        cl_ready = g("nsq_client_ready", "the consumer's RDY count", labels=_CLIENT)
        cl_in_flight = g("nsq_client_in_flight", "messages in flight to the consumer",
                         labels=_CLIENT)
        cl_connected = g("nsq_client_connect_time_seconds", "when the consumer connected",
                         labels=_CLIENT)
        pub = c("nsq_client_published", "messages the connection published to the topic",
                labels=_PRODUCER)
        # crash-safe mode only (gnsq): the topic log and each channel's place in it
        log_bytes = g("nsq_topic_log_bytes", "bytes in the topic log's segments", labels=_TOPIC)
        log_retained = g("nsq_topic_log_retained_bytes",
                         "bytes of the topic log every channel is done with, kept for replay",
                         labels=_TOPIC)
        log_end = g("nsq_topic_log_end_seq", "sequence number of the next message in the log",
                    labels=_TOPIC)
        ch_position = g("nsq_channel_log_position",
                        "sequence number of the next log message the channel reads",
                        labels=_CHANNEL)
        ch_committed = g("nsq_channel_log_committed",
                         "every log message below this sequence number is finished",
                         labels=_CHANNEL)

        for topic in doc["topics"] or ():
            t = [topic["topic_name"]]
            topic_msgs.add_metric(t, topic["message_count"])
            topic_bytes.add_metric(t, topic["message_bytes"])
            topic_depth.add_metric(t, topic["depth"])
            topic_backend.add_metric(t, topic["backend_depth"])
            topic_paused.add_metric(t, 1.0 if topic["paused"] else 0.0)
            _e2e(topic_e2e, t, topic["e2e_processing_latency"])
            if "log_bytes" in topic:
                log_bytes.add_metric(t, topic["log_bytes"])
                log_retained.add_metric(t, topic["log_retained_bytes"])
                log_end.add_metric(t, topic["log_end_seq"])
            for channel in topic["channels"]:
                ch = [*t, channel["channel_name"]]
                ch_msgs.add_metric(ch, channel["message_count"])
                ch_requeued.add_metric(ch, channel["requeue_count"])
                ch_timed_out.add_metric(ch, channel["timeout_count"])
                ch_depth.add_metric(ch, channel["depth"])
                ch_backend.add_metric(ch, channel["backend_depth"])
                ch_in_flight.add_metric(ch, channel["in_flight_count"])
                ch_deferred.add_metric(ch, channel["deferred_count"])
                ch_clients.add_metric(ch, channel["client_count"])
                ch_paused.add_metric(ch, 1.0 if channel["paused"] else 0.0)
                _e2e(ch_e2e, ch, channel["e2e_processing_latency"])
                if "log_position" in channel:
                    ch_position.add_metric(ch, channel["log_position"])
                    ch_committed.add_metric(ch, channel["log_committed"])
                for client in channel["clients"] or ():
                    cl = [*ch, client["client_id"], client["hostname"],
                          client["remote_address"], client["user_agent"]]
                    cl_msgs.add_metric(cl, client["message_count"])
                    cl_finished.add_metric(cl, client["finish_count"])
                    cl_requeued.add_metric(cl, client["requeue_count"])
                    cl_ready.add_metric(cl, client["ready_count"])
                    cl_in_flight.add_metric(cl, client["in_flight_count"])
                    cl_connected.add_metric(cl, client["connect_ts"])
        for producer in doc["producers"] or ():
            who = [producer["client_id"], producer["hostname"], producer["remote_address"],
                   producer["user_agent"]]
            for item in producer.get("pub_counts", ()):
                pub.add_metric([item["topic"], *who], item["count"])

        yield from (
            up, start, topic_msgs, topic_bytes, topic_depth, topic_backend, topic_paused,
            topic_e2e, ch_msgs, ch_requeued, ch_timed_out, ch_depth, ch_backend, ch_in_flight,
            ch_deferred, ch_clients, ch_paused, ch_e2e, cl_msgs, cl_finished, cl_requeued,
            cl_ready, cl_in_flight, cl_connected, pub,
        )
        for family in (log_bytes, log_retained, log_end, ch_position, ch_committed):
            if family.samples:
                yield family
        yield from _policy_families(doc)


def _policy_families(doc: dict) -> list[Metric]:
    """Counters of the channels' delivery policies (nsqd/policy.py); none without a policy."""
    policies = [
        ([topic["topic_name"], channel["channel_name"]], channel["policy"])
        for topic in doc["topics"] or ()
        for channel in topic["channels"]
        if "policy" in channel
    ]
    if not policies:
        return []
    reason = [*_CHANNEL, "reason"]
    dead = CounterMetricFamily("nsq_channel_dead_lettered",
                               "messages moved to the dead-letter topic", labels=reason)
    dropped = CounterMetricFamily("nsq_channel_policy_dropped",
                                  "messages dropped by msg_ttl or max_depth", labels=reason)
    rejected = CounterMetricFamily("nsq_channel_policy_rejected",
                                   "published messages refused by max_depth", labels=_CHANNEL)
    pending = GaugeMetricFamily("nsq_channel_dead_letter_pending",
                                "dead letters not yet in the dead-letter topic", labels=_CHANNEL)
    for ch, policy in policies:
        for why, count in policy["dead_lettered"].items():
            dead.add_metric([*ch, why], count)
        for why, count in policy["dropped"].items():
            dropped.add_metric([*ch, why], count)
        rejected.add_metric(ch, policy["rejected"])
        pending.add_metric(ch, policy["dead_letter_pending"])
    return [dead, dropped, rejected, pending]


def make_registry(nsqd: Any, e2e: stats.E2ESource = stats.empty_e2e) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NSQDCollector(nsqd, e2e))
    return registry


def render(registry: CollectorRegistry, accept: str = "") -> tuple[bytes, str]:
    """(body, content type) for a scrape with this Accept header."""
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type
