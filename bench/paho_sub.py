#!/usr/bin/env python3
"""A paho-mqtt subscriber that bench/run compares flupd with.

It connects over TLS, subscribes to one topic filter and appends every
message to a file as one JSON Lines object (topic, QoS, payload as text),
flushed per line as flupd's file sink writes per event. It stops on SIGTERM.
"""

import argparse
import json
import signal
import ssl
import sys

import paho.mqtt.client as mqtt


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cafile", required=True)
    parser.add_argument("--username", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--qos", type=int, choices=(0, 1), default=1)
    parser.add_argument("--output", required=True, help="JSON Lines file to append to")
    args = parser.parse_args()

    output = open(args.output, "a", encoding="utf-8")

    # paho-mqtt 2 requires the callback API version; 1.x has no such argument.
    if hasattr(mqtt, "CallbackAPIVersion"):
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-bench", clean_session=True)
    else:
        client = mqtt.Client(client_id="paho-bench", clean_session=True)
    client.username_pw_set(args.username, args.password)
    client.tls_set(ca_certs=args.cafile, tls_version=ssl.PROTOCOL_TLS_CLIENT)

    def on_connect(client, userdata, flags, reason_code, properties=None):
        client.subscribe(args.topic, qos=args.qos)

    def on_message(client, userdata, message):
        record = {
            "topic": message.topic,
            "qos": message.qos,
            "payload": message.payload.decode("utf-8", errors="replace"),
        }
        output.write(json.dumps(record) + "\n")
        output.flush()

    client.on_connect = on_connect
    client.on_message = on_message
    signal.signal(signal.SIGTERM, lambda signum, frame: client.disconnect())
    client.connect(args.host, args.port, keepalive=30)
    client.loop_forever()
    output.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
