"""MLLP ingest benchmark: throughput and ACK latency of the listener (persist, then ACK), model
excluded, over loopback, against hl7apy's MLLPServer measured in the same run; plus end-to-end
latency from message to stored suggestion with the default model when one is registered.

    python -m bench.mllp_bench [--messages 4000] [--rate 100] [--seconds 10]

Each server runs in its own process; the load generator is an asyncio client in this one.
Writes the `mllp` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()

START, END = b"\x0b", b"\x1c\r"
CONNECTIONS = 8
LABELS = {
    "radproto": "radproto listener (validate + SQLite WAL/FULL commit, then ACK)",
    "naive": "baseline: naive asyncio server, hl7apy parse + ACK, no storage",
    "hl7apy": "baseline: hl7apy MLLPServer, parse + ACK, no storage (1 message/connection)",
}


def order_message(i: int, run: str) -> bytes:
    """A realistic ORM^O01 (about 700 bytes; invented patient)."""
    cid = f"{run}{i:07d}"
    segments = [
        f"MSH|^~\\&|RIS|GENHOSP|RADPROTO|RAD|20260101120000||ORM^O01|{cid}|P|2.3.1",
        f"PID|1||MRN{i:08d}^^^GENHOSP^MR||DOE^JANE^Q||19700101|F|||1 MAIN ST^^CITY^ST^00000",
        "PV1|1|O|RAD^^^GENHOSP||||1234^REFERRER^RITA|||RAD||||||||OP|V123",
        f"ORC|NW|PL{i:08d}^RIS|||SC||^^^20260101130000^^R||20260101120000|CLERK||1234^REF^RITA",
        f"OBR|1|PL{i:08d}^RIS||74177^CT ABDOMEN AND PELVIS WITH CONTRAST^CPT|||20260101120000"
        "|||||||||1234^REF^RITA||ACC1|||||CT|||^^^20260101130000^^R|||||||||||||||"
        "|||RLQ pain, fever; r/o appendicitis",
        "NTE|1||Patient reports nausea since yesterday. Creatinine normal.",
        "DG1|1|I10|R10.31^Right lower quadrant pain^I10|Right lower quadrant pain||A",
    ]
    return ("\r".join(segments) + "\r").encode()


# ---------------------------------------------------------------------------- servers


def serve_radproto(port: int, db: str) -> None:
    from radproto.adapter.hl7_listener import MessageHandler, MllpListener
    from radproto.adapter.store import open_store

    async def main() -> None:
        store = open_store(f"sqlite:///{db}")
        from concurrent.futures import ThreadPoolExecutor

        handler = MessageHandler(store, executor=ThreadPoolExecutor(32))
        await MllpListener(handler, host="127.0.0.1", port=port).start()
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def serve_hl7apy(port: int) -> None:
    from hl7apy.mllp import AbstractHandler, MLLPServer
    from hl7apy.parser import parse_message

    class Handler(AbstractHandler):
        def reply(self) -> str:
            msg = parse_message(self.incoming_message, find_groups=False)
            cid = msg.msh.msh_10.value
            ack = (f"MSH|^~\\&|RADPROTO|RAD|RIS|GENHOSP|20260101||ACK^O01|A{cid}|P|2.3.1\r"
                   f"MSA|AA|{cid}")
            return "\x0b" + ack + "\x1c\r"

    server = MLLPServer("127.0.0.1", port, {"ORM^O01": (Handler,)})
    print("ready", flush=True)
    server.serve_forever()


def serve_naive(port: int) -> None:
    """A naive asyncio MLLP server: persistent connections, hl7apy parse, ACK; no storage."""
    from hl7apy.parser import parse_message

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                block = await reader.readuntil(END)
                msg = parse_message(block.strip(b"\x0b\x1c\r").decode().replace("\r\r", "\r"),
                                    find_groups=False)
                cid = msg.msh.msh_10.value
                ack = (f"MSH|^~\\&|RADPROTO|RAD|RIS|GENHOSP|20260101||ACK^O01|A{cid}|P|2.3.1\r"
                       f"MSA|AA|{cid}")
                writer.write(START + ack.encode() + END)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        await asyncio.start_server(handle, "127.0.0.1", port)
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(kind: str, port: int, db: str = "") -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "bench.mllp_bench", "--serve", kind,
                             str(port), db], cwd=HERE.parents[1],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"ready":
        raise RuntimeError(f"{kind} server did not start")
    return proc


# ---------------------------------------------------------------------------- load


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def request(self, payload: bytes) -> bytes:
        self.writer.write(START + payload + END)
        await self.writer.drain()
        return await self.reader.readuntil(END)


async def _one_shot(port: int, payload: bytes) -> bytes:
    """hl7apy's server answers one message per connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return await Conn(reader, writer).request(payload)
    finally:
        writer.close()


async def throughput(port: int, n: int, run: str, *, persistent: bool) -> tuple[float, int]:
    """Messages per second with CONNECTIONS senders back to back; returns (rate, AA count)."""
    ok = 0
    per = n // CONNECTIONS

    async def sender(k: int) -> None:
        nonlocal ok
        conn = Conn(*await asyncio.open_connection("127.0.0.1", port)) if persistent else None
        for j in range(per):
            payload = order_message(k * per + j, run)
            ack = await (conn.request(payload) if conn else _one_shot(port, payload))
            ok += b"MSA|AA|" in ack
        if conn:
            conn.writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(sender(k) for k in range(CONNECTIONS)))
    return per * CONNECTIONS / (time.perf_counter() - started), ok


async def fixed_rate(port: int, rate: float, seconds: float, run: str, *,
                     persistent: bool) -> list[float]:
    """ACK latency (ms) at a fixed offered load, measured from each message's scheduled send
    time (so a server that falls behind is charged for the queueing, no coordinated omission)."""
    n = int(rate * seconds)
    pool: asyncio.Queue[Conn] = asyncio.Queue()
    if persistent:
        for _ in range(CONNECTIONS):
            pool.put_nowait(Conn(*await asyncio.open_connection("127.0.0.1", port)))
    latencies: list[float] = []
    start = time.perf_counter() + 0.2

    async def one(i: int) -> None:
        scheduled = start + i / rate
        await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
        payload = order_message(i, run)
        if persistent:
            conn = await pool.get()
            try:
                await conn.request(payload)
            finally:
                pool.put_nowait(conn)
        else:
            await _one_shot(port, payload)
        latencies.append((time.perf_counter() - scheduled) * 1000)

    await asyncio.gather(*(one(i) for i in range(n)))
    while not pool.empty():
        pool.get_nowait().writer.close()
    return latencies


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


# ---------------------------------------------------------------------------- end to end


async def end_to_end(tmp: str, n: int = 5) -> str:
    """Milliseconds from sending an order to its stored suggestion, through the whole service:
    the registered default model if there is one, else the embedded base model (same size and
    scoring path, untrained: the latency is representative, the suggestions are not)."""
    from radproto.adapter.default_model import load_default_classifier
    from radproto.adapter.service import Service
    from radproto.adapter.settings import load_settings

    settings = load_settings(None, {"mllp_port": 0, "http_enabled": False,
                                    "store": f"sqlite:///{tmp}/e2e.db", "worker_batch_size": 1,
                                    "security": {"allow_anonymous": True}})
    which = "the registered default model"
    try:
        from radproto.training.tracking import registry_has

        registered = registry_has("models:/radproto@champion", tracking_uri=settings.tracking_uri)
    except Exception:
        registered = False
    if not settings.model and not registered:
        settings.model = "embedded"
        which = ("the embedded base model, untrained (no default model registered on this "
                 "machine yet; same network and scoring path)")
    service = Service(settings, model_provider=load_default_classifier)
    ctx = await service.start()
    try:
        for _ in range(3600):
            if ctx.model_status != "loading":
                break
            await asyncio.sleep(0.5)
        if ctx.model_status != "ready":
            return f"not run: model {ctx.model_status} {ctx.model_error}"
        conn = Conn(*await asyncio.open_connection("127.0.0.1", ctx.listener.port))
        times, acks = [], []
        for i in range(n):
            sent = time.perf_counter()
            await conn.request(order_message(i, "E2E"))
            acks.append((time.perf_counter() - sent) * 1000)
            while ctx.store.latest_suggestion_for_order(f"PL{i:08d}") is None:
                await asyncio.sleep(0.005)
            times.append((time.perf_counter() - sent) * 1000)
        conn.writer.close()
        return (f"{n} orders sent one at a time to the full service (CPU, {which}): "
                f"suggestion stored after p50 {pct(times, 50) / 1000:.1f} s, max "
                f"{max(times) / 1000:.1f} s; their ACKs took p50 {pct(acks, 50):.1f} ms, "
                f"max {max(acks):.1f} ms.")
    finally:
        await service.stop()


# ---------------------------------------------------------------------------- main


async def run(args: argparse.Namespace) -> None:
    from bench.report import machine_description, markdown_table, write_section

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        verdict = ""
        for kind, persistent in (("radproto", True), ("naive", True), ("hl7apy", False)):
            port = _free_port()
            proc = start_server(kind, port, f"{tmp}/{kind}.db")
            try:
                await throughput(port, 200, "W", persistent=persistent)  # warm-up
                rate, ok = await throughput(port, args.messages, "T", persistent=persistent)
                lat = await fixed_rate(port, args.rate, args.seconds, "L", persistent=persistent)
            finally:
                proc.terminate()
                proc.wait(10)
            rows.append([
                LABELS[kind],
                f"{rate:,.0f}", f"{ok}/{args.messages // CONNECTIONS * CONNECTIONS}",
                f"{pct(lat, 50):.1f}", f"{pct(lat, 99):.1f}", f"{max(lat):.1f}",
                f"{statistics.mean(lat):.1f}"])
            print(rows[-1], flush=True)
            if kind == "radproto":
                verdict = (f"Targets (>= 500 msg/s; ACK p99 <= 50 ms at 100 msg/s): "
                           f"{'met' if rate >= 500 and pct(lat, 99) <= 50 else 'NOT met'} "
                           f"({rate:,.0f} msg/s, p99 {pct(lat, 99):.1f} ms).")
        e2e = await end_to_end(tmp) if not args.skip_e2e else "not run (--skip-e2e)"
    table = markdown_table(
        ["server", "throughput (msg/s)", "AA", f"ACK p50 @ {args.rate:g}/s (ms)",
         "p99 (ms)", "max (ms)", "mean (ms)"], rows)
    body = (f"Machine: {machine_description()}. Loopback; {CONNECTIONS} concurrent engine "
            f"connections; {args.messages} messages of ~700 bytes for throughput, then "
            f"{args.rate:g} msg/s offered for {args.seconds:g} s for latency (measured from each "
            "message's scheduled send time). Model excluded: ACKs never wait for it. "
            f"{verdict}\n\n{table}\n\n"
            f"End to end (message -> stored suggestion, default model): {e2e}\n")
    write_section("mllp", "MLLP ingest and acknowledgement", body)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        kind, port = sys.argv[2], int(sys.argv[3])
        if kind == "radproto":
            serve_radproto(port, sys.argv[4])
        elif kind == "naive":
            serve_naive(port)
        else:
            serve_hl7apy(port)
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--skip-e2e", action="store_true")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
