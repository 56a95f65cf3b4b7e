"""An HTTP/1.1 proxy on 127.0.0.1 between kiln and an object store that
fails a share of the requests, as a flaky network and an overloaded store do:

- answers 500 or 503 without passing the request on;
- resets the connection before passing it on;
- passes the request on, then resets instead of answering (the answer of
  a write that happened is lost);
- stalls past the client's timeout, then closes;
- with --strip-conditions, drops `If-None-Match` and `If-Match` from every
  request, as a store that ignores conditional writes does.

    faulty_proxy.py LISTEN_PORT UPSTREAM_PORT [--error P] [--reset P] [--lose P]
                    [--stall P] [--stall-seconds S] [--seed N] [--strip-conditions]

Each fault is drawn per request from a seeded generator. It prints one line
`ready` when it listens, and on SIGTERM the counts of what it did.
"""
import argparse
import asyncio
import random
import signal
import socket
import struct
import sys

counts = {"passed": 0, "error": 0, "reset": 0, "lose": 0, "stall": 0}


STRIP = ()


async def read_request(reader):
    """The request's head and body, or None at the end of the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    body = b""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            body += size_line + chunk
            if size == 0:
                break
    elif "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    # One upstream connection per request: ask it to close when done.
    dropped = ("connection:", "keep-alive:", *STRIP)
    kept = [l for l in lines[1:] if l and not l.lower().startswith(dropped)]
    head = "\r\n".join([lines[0], *kept, "Connection: close", "", ""]).encode("latin-1")
    return head, body


def reset(writer):
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def forward(upstream_port, head, body):
    r, w = await asyncio.open_connection("127.0.0.1", upstream_port)
    w.write(head + body)
    await w.drain()
    answer = await r.read()
    w.close()
    return answer


async def serve(args, rng, reader, writer):
    try:
        while True:
            req = await read_request(reader)
            if req is None:
                break
            x = rng.random()
            if x < args.error:
                counts["error"] += 1
                code = rng.choice([b"500 Internal Server Error", b"503 Service Unavailable"])
                writer.write(b"HTTP/1.1 " + code + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                await writer.drain()
                break
            x -= args.error
            if x < args.reset:
                counts["reset"] += 1
                reset(writer)
                return
            x -= args.reset
            if x < args.stall:
                counts["stall"] += 1
                await asyncio.sleep(args.stall_seconds)
                break
            x -= args.stall
            answer = await forward(args.upstream, *req)
            if x < args.lose:
                counts["lose"] += 1
                reset(writer)
                return
            counts["passed"] += 1
            writer.write(answer)
            await writer.drain()
            # The answer says `Connection: close` when upstream closed;
            # either way, this connection ends with its answer.
            break
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    try:
        writer.close()
    except Exception:
        pass


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("port", type=int)
    p.add_argument("upstream", type=int)
    p.add_argument("--error", type=float, default=0.1)
    p.add_argument("--reset", type=float, default=0.05)
    p.add_argument("--lose", type=float, default=0.03)
    p.add_argument("--stall", type=float, default=0.02)
    p.add_argument("--stall-seconds", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--strip-conditions", action="store_true")
    args = p.parse_args()
    if args.strip_conditions:
        global STRIP
        STRIP = ("if-none-match:", "if-match:")
    rng = random.Random(args.seed)
    server = await asyncio.start_server(
        lambda r, w: serve(args, rng, r, w), "127.0.0.1", args.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    async with server:
        await stop.wait()
    print(" ".join(f"{k}={v}" for k, v in counts.items()), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
