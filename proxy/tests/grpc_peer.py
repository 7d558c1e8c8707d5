"""A real gRPC peer for the L7 tests (grpcio, no generated code: raw bytes).

    grpc_peer.py serve ADDR            # unary server on ADDR, answers b"pong:" + request
    grpc_peer.py call TARGET METHOD    # prints "OK <reply>" or "ERR <CODE> <details>"
"""
import sys
from concurrent import futures

import grpc


def serve(addr):
    def pong(request, context):
        return b"pong:" + request

    class Any(grpc.GenericRpcHandler):
        def service(self, details):
            return grpc.unary_unary_rpc_method_handler(pong)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((Any(),))
    server.add_insecure_port(addr)
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def call(target, method):
    options = [("grpc.enable_http_proxy", 0)]
    with grpc.insecure_channel(target, options=options) as channel:
        try:
            reply = channel.unary_unary(method)(b"ping", timeout=5)
            print("OK", reply.decode())
        except grpc.RpcError as e:
            print("ERR", e.code().name, e.details())


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2])
    else:
        call(sys.argv[2], sys.argv[3])
