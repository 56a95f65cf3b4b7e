#!/usr/bin/env python3
"""Write the seed corpora of kiln's fuzz targets (see src/fuzz.rs).

    .venv/bin/python scripts/fuzz_seeds.py [OUT]      # default: fuzz/seeds

One folder a target, small files (a few KB) that reach each reader's paths:
every image format kiln decodes (with the selector byte the `image` target
strips), WAVs of every sample format with odd rates and NaNs, the committed
FLAC/MP3/Ogg clips, WebDataset tars with good, odd and broken members,
JSONL and CSV with escapes, bad UTF-8 and long lines, Parquet with row
groups, dictionaries and nulls, the bundled pipelines, translator texts and
Arrow IPC shards. The same bytes every run (fixed seeds, no timestamps).
"""

import io
import json
import math
import struct
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "fuzz" / "seeds"

# The extensions the image and audio targets pick from with their first byte.
IMAGE_EXTS = ["jpg", "png", "webp", "gif", "bmp", "tif"]
AUDIO_EXTS = ["wav", "flac", "mp3", "ogg"]


def write(target, name, data):
    d = OUT / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def picture(w, h, mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    a = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
    return Image.fromarray(a[:, :, 0] if channels == 1 else a, mode)


def encoded(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def images():
    out = {}
    out["jpg-rgb"] = ("jpg", encoded(picture(9, 7), "JPEG", quality=80))
    out["jpg-progressive"] = ("jpg", encoded(picture(16, 8, seed=1), "JPEG", progressive=True))
    out["jpg-grey"] = ("jpg", encoded(picture(8, 8, "L", 2), "JPEG"))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90
    out["jpg-exif"] = ("jpg", encoded(picture(12, 6, seed=3), "JPEG", exif=exif.tobytes()))
    out["png-rgba"] = ("png", encoded(picture(7, 5, "RGBA", 4), "PNG"))
    out["png-palette"] = ("png", encoded(picture(8, 8, seed=5).convert("P"), "PNG"))
    out["png-grey16"] = ("png", encoded(Image.fromarray(np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000), "PNG"))
    out["webp-lossy"] = ("webp", encoded(picture(10, 10, seed=6), "WEBP", quality=50))
    out["webp-lossless"] = ("webp", encoded(picture(6, 9, "RGBA", 7), "WEBP", lossless=True))
    frames = [picture(8, 8, seed=s).convert("P") for s in (8, 9)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=10)
    out["gif-two-frames"] = ("gif", buf.getvalue())
    out["bmp"] = ("bmp", encoded(picture(5, 3, seed=10), "BMP"))
    out["tif"] = ("tif", encoded(picture(6, 4, seed=11), "TIFF"))
    out["tif-deflate"] = ("tif", encoded(picture(6, 4, seed=12), "TIFF", compression="tiff_adobe_deflate"))
    return out


def image_seeds():
    for name, (ext, data) in images().items():
        write("image", name, bytes([IMAGE_EXTS.index(ext)]) + data)
    # A JPEG without its end marker, a header claiming a huge size.
    jpg = images()["jpg-rgb"][1]
    write("image", "jpg-truncated", bytes([0]) + jpg[: len(jpg) // 2])
    png = bytearray(images()["png-rgba"][1])
    png[16:24] = struct.pack(">II", 100000, 100000)
    write("image", "png-claims-huge", bytes([1]) + bytes(png))


def wav(samples, rate, fmt_tag, bits, channels=1, extensible=False):
    """A RIFF WAVE file; `samples` is (frames, channels) already in the sample format."""
    data = samples.tobytes()
    block = channels * bits // 8
    if extensible:
        fmt = struct.pack("<HHIIHH", 0xFFFE, channels, rate, rate * block, block, bits)
        guid = struct.pack("<H", fmt_tag) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
        fmt += struct.pack("<HHI", 22, bits, (1 << channels) - 1) + guid
    else:
        fmt = struct.pack("<HHIIHH", fmt_tag, channels, rate, rate * block, block, bits)
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    if len(data) % 2:
        chunks += b"\x00"
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


def audio_seeds():
    t = np.arange(600) / 6000.0
    tone = 0.5 * np.sin(2 * math.pi * 440 * t)
    sel = bytes([AUDIO_EXTS.index("wav")])
    write("audio", "wav-pcm16", sel + wav((tone * 32767).astype("<i2"), 6000, 1, 16))
    write("audio", "wav-u8", sel + wav(((tone + 1) * 127.5).astype(np.uint8), 8000, 1, 8))
    s24 = (tone * (2**23 - 1)).astype("<i4")
    b24 = np.frombuffer(s24.tobytes(), np.uint8).reshape(-1, 4)[:, :3].copy()
    write("audio", "wav-s24", sel + wav(b24, 11025, 1, 24))
    write("audio", "wav-s32", sel + wav((tone * (2**31 - 1)).astype("<i4"), 16000, 1, 32))
    write("audio", "wav-f32", sel + wav(tone.astype("<f4"), 22050, 3, 32))
    write("audio", "wav-f64", sel + wav(tone.astype("<f8"), 44100, 3, 64))
    nan = tone.astype("<f4")
    nan[10] = np.nan
    nan[20] = np.inf
    write("audio", "wav-f32-nan", sel + wav(nan, 16000, 3, 32))
    stereo = np.stack([tone, -tone], 1)
    write("audio", "wav-stereo", sel + wav((stereo * 32767).astype("<i2"), 48000, 1, 16, 2))
    write("audio", "wav-extensible", sel + wav((stereo * 32767).astype("<i2"), 8000, 1, 16, 2, True))
    write("audio", "wav-empty", sel + wav(np.zeros(0, "<i2"), 16000, 1, 16))
    for f in sorted((ROOT / "fixtures" / "audio" / "folder").rglob("*")):
        ext = f.suffix[1:]
        if ext in AUDIO_EXTS[1:] and f.stat().st_size <= 16384:
            write("audio", f"fixture-{f.name}", bytes([AUDIO_EXTS.index(ext)]) + f.read_bytes())


def tar_bytes(members, fmt=tarfile.USTAR_FORMAT):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def tar_seeds():
    imgs = images()
    jpg, png = imgs["jpg-rgb"][1], imgs["png-rgba"][1]
    write("tar", "good", tar_bytes([("a.jpg", jpg), ("a.cls", b"0"), ("b.png", png), ("b.cls", b"1")]))
    write("tar", "labels-txt-json", tar_bytes([("dir/a.jpg", jpg), ("dir/a.txt", b"cat"), ("dir/b.webp", imgs["webp-lossy"][1]), ("dir/b.json", b'{"label": "dog"}')]))
    write("tar", "no-image-and-split-key", tar_bytes([("a.cls", b"0"), ("b.jpg", jpg), ("c.png", png), ("b.cls", b"1")]))
    write("tar", "unknown-label", tar_bytes([("a.jpg", jpg), ("a.cls", b"7"), ("b.png", png), ("b.txt", b"cow")]))
    write("tar", "pax-long-name", tar_bytes([("x" * 120 + ".a.jpg", jpg), ("x" * 120 + ".a.cls", b"0")], tarfile.PAX_FORMAT))
    write("tar", "gnu-long-name", tar_bytes([("y" * 120 + ".jpg", png), ("y" * 120 + ".cls", b"1")], tarfile.GNU_FORMAT))
    good = tar_bytes([("a.jpg", jpg), ("a.cls", b"0"), ("b.png", png), ("b.cls", b"1")])
    write("tar", "truncated", good[: len(good) // 2])


def jsonl_seeds():
    write("jsonl", "plain", b'{"text": "The fox jumps.", "lang": "en"}\n{"text": "Le renard saute.", "lang": "fr"}\n')
    write("jsonl", "escapes", '{"text": "tab\\t nl\\n quote\\" \\u00e9 \\ud83d\\ude00", "lang": null}\n{"lang": "en", "text": "\u00e9t\u00e9"}\r\n'.encode())
    write("jsonl", "bad-lines", b'{"text": "ok"}\n{"text": 5}\n{"nope": "x"}\nnot json\n{"text": "\xff\xfe"}\n\n{"text": "last"}')
    write("jsonl", "nested", b'{"meta": {"text": "inner"}, "text": "outer", "lang": ["en"]}\n{"text": "' + b"a" * 300 + b'"}\n')
    write("csv", "plain", b'text,lang\n"The fox, jumps.",en\nLe renard,fr\n')
    write("csv", "quoted-newlines", b'text,lang,extra\n"line one\nline two",en,1\n"say ""hi""",,2\r\n')
    write("csv", "bom-and-bad", b'\xef\xbb\xbftext,lang\nok,en\n\xff,fr\nshort\n"unterminated,en\n')


def parquet_bytes(table, **kw):
    buf = io.BytesIO()
    pq.write_table(table, buf, **kw)
    return buf.getvalue()


def parquet_seeds():
    t = pa.table({"text": ["one", "two", None, "four", "five"], "lang": ["en", None, "en", "fr", "en"]})
    write("parquet", "plain", parquet_bytes(t))
    write("parquet", "row-groups", parquet_bytes(t, row_group_size=2, compression="zstd"))
    write("parquet", "dictionary", parquet_bytes(t, use_dictionary=True, compression="snappy"))
    large = pa.table({"text": pa.array(["a", "b"], pa.large_string()), "lang": pa.array([1, 2], pa.int32())})
    write("parquet", "large-string-int-lang", parquet_bytes(large, compression="none"))
    write("parquet", "no-text", parquet_bytes(pa.table({"other": [1, 2, 3]})))
    write("parquet", "empty", parquet_bytes(t.slice(0, 0)))


def pipeline_seeds():
    for f in sorted((ROOT / "pipelines").glob("*.toml")):
        write("pipeline", f"bundled-{f.stem}", f.read_bytes())
    write("pipeline", "local-text", b'[[inputs]]\npath = "data.jsonl"\n\n[[stages]]\ntype = "tokenize"\ntokenizer = "tokenizer.json"\n\n[[stages]]\ntype = "chunk"\nmax_length = 8\n\n[output]\npath = "out"\n')
    write("pipeline", "local-images", b'seed = 3\n[[inputs]]\npath = "images"\nformat = "images"\n\n[[stages]]\ntype = "decode_image"\n\n[[stages]]\ntype = "resize_image"\nsize = 8\ncrop = 8\n\n[[stages]]\ntype = "mix"\n\n[output]\npath = "out"\nmax_shard_rows = 2\n')
    write("pipeline", "local-sql", b'sql = "SELECT sample_id, source, position, upper(text) AS text FROM input"\n[[inputs]]\npath = "*.jsonl"\n\n[limits]\nmax_line_bytes = 10\n\n[plan]\ntask_bytes = 1\nverify = "content"\n\n[output]\npath = "out"\nformat = "parquet"\n')


def translate_seeds():
    write("translate", "plain", "The quick brown fox\u0001jumps over the lazy dog.".encode())
    write("translate", "specials", "a^b$c [d] e/f \\g @h *i <j> {k} #l ~m\u0001line\nbreak\r\u0000nul  ".encode())
    write("translate", "tagger", b"^foxes/fox<n><pl>$ ^zebra/*zebra$ \\^esc/esc<adj>$")


def loader_seeds():
    def stream(table, **kw):
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(**kw)) as w:
            for b in table.to_batches(max_chunksize=2):
                w.write_batch(b)
        return sink.getvalue().to_pybytes()

    t = pa.table({
        "sample_id": ["a:0", "a:1", "b:0"],
        "label": pa.array([0, 1, 0], pa.int64()),
        "input_ids": pa.array([[1, 2], [3], []], pa.list_(pa.uint32())),
        "pixels": pa.array([b"\x00" * 4, b"\x01" * 4, b""], pa.binary()),
    })
    write("loader", "shard", stream(t))
    write("loader", "shard-zstd", stream(t, compression="zstd"))
    write("loader", "shard-lz4", stream(t, compression="lz4"))
    write("loader", "empty", stream(t.slice(0, 0)))
    write("loader", "truncated", stream(t)[:-40])


def main():
    image_seeds()
    audio_seeds()
    tar_seeds()
    jsonl_seeds()
    parquet_seeds()
    pipeline_seeds()
    translate_seeds()
    loader_seeds()
    for d in sorted(OUT.iterdir()):
        print(f"{d.name}: {len(list(d.iterdir()))} seeds")


if __name__ == "__main__":
    main()
