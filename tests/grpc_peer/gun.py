"""A gun peer written with grpcio (Google's gRPC library), not with mtt's code: the
GunService's Tun call (Xray's stream.proto: message Hunk { bytes data = 1; }), its messages
encoded here by hand, as protoc would.

  gun.py client HOST:PORT CA_PEM NAME SERVICE CALLS BYTES
      CALLS concurrent Tun calls through an mtt server to an echo destination, each sending
      BYTES random bytes then ending its request (half-close) and checking what comes back
      by SHA-256; then one call cancelled midway, then one more that must still work.
      Prints "ok CALLS" on success.
  gun.py server PORT CERT_PEM KEY_PEM SERVICE
      A Tun service that echoes every Hunk and ends its response when the request ends.
      Prints "listening PORT" once serving.
"""

import hashlib
import os
import sys
import threading
from concurrent import futures

import grpc


def varint(n):
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def encode(data):
    return b"\x0a" + varint(len(data)) + data


def decode(msg):
    """Field 1 (repeated bytes: Hunk or MultiHunk), concatenated; other fields skipped."""
    out, i = bytearray(), 0
    while i < len(msg):
        tag, shift = 0, 0
        while True:
            b = msg[i]
            i += 1
            tag |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                break
        field, wire = tag >> 3, tag & 7
        if wire == 2:
            n, shift = 0, 0
            while True:
                b = msg[i]
                i += 1
                n |= (b & 0x7F) << shift
                shift += 7
                if b < 0x80:
                    break
            if field == 1:
                out += msg[i : i + n]
            i += n
        elif wire == 0:
            while msg[i] >= 0x80:
                i += 1
            i += 1
        else:
            raise ValueError("unexpected wire type %d" % wire)
    return bytes(out)


def client(addr, ca, name, service, calls, size):
    creds = grpc.ssl_channel_credentials(root_certificates=open(ca, "rb").read())
    opts = [("grpc.ssl_target_name_override", name), ("grpc.default_authority", name)]
    channel = grpc.secure_channel(addr, creds, options=opts)
    tun = channel.stream_stream(
        "/%s/Tun" % service, request_serializer=encode, response_deserializer=decode
    )
    errors = []

    def one(i):
        try:
            data = os.urandom(size)
            chunks = [data[k : k + 16384] for k in range(0, len(data), 16384)]
            got = bytearray()
            for piece in tun(iter(chunks), timeout=60):
                got += piece
            if hashlib.sha256(got).digest() != hashlib.sha256(data).digest():
                errors.append("call %d: %d bytes back of %d, or different" % (i, len(got), size))
        except Exception as e:  # noqa: BLE001 - reported, then the run fails
            errors.append("call %d: %r" % (i, e))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # A call cancelled midway (early close): the server must go on for the next one.
    gate = threading.Event()

    def slow():
        yield b"x" * 1000
        gate.wait(10)

    call = tun(slow(), timeout=30)
    next(call)
    call.cancel()
    gate.set()
    one(calls)
    if errors:
        print("failed: " + "; ".join(errors), flush=True)
        sys.exit(1)
    print("ok %d" % calls, flush=True)


def server(port, cert, key, service):
    def tun(requests, context):
        for data in requests:
            yield data

    handler = grpc.method_handlers_generic_handler(
        service,
        {
            "Tun": grpc.stream_stream_rpc_method_handler(
                tun, request_deserializer=decode, response_serializer=encode
            )
        },
    )
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    srv.add_generic_rpc_handlers((handler,))
    creds = grpc.ssl_server_credentials([(open(key, "rb").read(), open(cert, "rb").read())])
    bound = srv.add_secure_port("127.0.0.1:%s" % port, creds)
    srv.start()
    print("listening %d" % bound, flush=True)
    srv.wait_for_termination()


if __name__ == "__main__":
    if sys.argv[1] == "client":
        client(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6]), int(sys.argv[7]))
    else:
        server(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5])
