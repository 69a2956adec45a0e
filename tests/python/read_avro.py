"""Reads a topic the way a Python consumer of sluice does: confluent-kafka's Consumer and its
AvroDeserializer, with the schemas from the registry. Prints one JSON line per message: the key and
the value as the deserializer gives them (dates, decimals, UUIDs and bytes as text), or the error.

usage: read_avro.py BOOTSTRAP REGISTRY_URL TOPIC COUNT [TIMEOUT_SECONDS]
"""

import base64
import datetime
import decimal
import json
import sys
import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext


def plain(value):
    """What json cannot print, as text a test can compare."""
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": base64.b64encode(value).decode()}
    if isinstance(value, decimal.Decimal):
        return {"decimal": str(value)}
    if isinstance(value, uuid.UUID):
        return {"uuid": str(value)}
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return {type(value).__name__: value.isoformat()}
    raise TypeError(f"{type(value).__name__} is not printable")


def main():
    bootstrap, registry_url, topic, count = sys.argv[1:5]
    timeout = float(sys.argv[5]) if len(sys.argv) > 5 else 60.0
    count = int(count)
    registry = SchemaRegistryClient({"url": registry_url})
    deserialize = AvroDeserializer(registry)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "read-avro",
            "enable.auto.commit": False,
        }
    )
    partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    read = 0
    deadline = time.monotonic() + timeout
    while read < count and time.monotonic() < deadline:
        message = consumer.poll(1.0)
        if message is None:
            continue
        if message.error():
            raise SystemExit(f"consumer error: {message.error()}")
        read += 1
        out = {"partition": message.partition(), "offset": message.offset()}
        try:
            key_context = SerializationContext(topic, MessageField.KEY)
            value_context = SerializationContext(topic, MessageField.VALUE)
            out["key"] = deserialize(message.key(), key_context) if message.key() else None
            out["value"] = (
                deserialize(message.value(), value_context) if message.value() else None
            )
        except Exception as err:  # a message the deserializer refuses is the finding
            out["error"] = f"{type(err).__name__}: {err}"
        print(json.dumps(out, default=plain, sort_keys=True), flush=True)
    consumer.close()
    if read < count:
        raise SystemExit(f"read {read} of {count} messages from {topic} in {timeout} s")


if __name__ == "__main__":
    main()
