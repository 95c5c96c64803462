"""Training corpus for the bundled demo model: Jane Austen's six novels.

Fetches Debian's ``r-cran-janeaustenr`` package through apt (or reads it where it is
installed), decodes the R lazy-load database that holds the texts, and turns the novels
into clean paragraphs plus dialogue pairs for the chat-formatted part of training.
"""

from __future__ import annotations

import io
import logging
import lzma
import re
import struct
import subprocess
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEBIAN_PACKAGE = "r-cran-janeaustenr"
RDB_MEMBER = "usr/lib/R/site-library/janeaustenr/data/Rdata.rdb"
INSTALLED_RDB = Path("/") / RDB_MEMBER

# R serialization type codes (R Internals, "Serialization Formats").
_CHARSXP = 9
_STRSXP = 16
_HAS_ATTR_BIT = 1 << 9


@dataclass(slots=True)
class Book:
    title: str
    lines: list[str]


def fetch_rdb(cache_dir: Path) -> Path:
    """Path of the package's Rdata.rdb, downloading the .deb with apt-get if needed."""
    if INSTALLED_RDB.exists():
        return INSTALLED_RDB
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / "Rdata.rdb"
    if target.exists():
        return target
    debs = sorted(cache_dir.glob(f"{DEBIAN_PACKAGE}_*.deb"))
    if not debs:
        log.info("apt-get download %s into %s", DEBIAN_PACKAGE, cache_dir)
        subprocess.run(["apt-get", "download", DEBIAN_PACKAGE], cwd=cache_dir, check=True)
        debs = sorted(cache_dir.glob(f"{DEBIAN_PACKAGE}_*.deb"))
    if not debs:
        raise FileNotFoundError(f"apt-get download {DEBIAN_PACKAGE} left no .deb in {cache_dir}")
    target.write_bytes(_deb_member(debs[-1], RDB_MEMBER))
    return target


def _deb_member(deb: Path, member: str) -> bytes:
    """Read one file out of a .deb (an ar archive holding data.tar.*)."""
    blob = deb.read_bytes()
    if not blob.startswith(b"!<arch>\n"):
        raise ValueError(f"{deb} is not an ar archive")
    pos = 8
    while pos + 60 <= len(blob):
        header = blob[pos : pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        body = blob[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size % 2)
        if name.startswith("data.tar"):
            if name.endswith(".xz"):
                body = lzma.decompress(body)
            with tarfile.open(fileobj=io.BytesIO(body)) as tar:
                for info in tar.getmembers():
                    if info.name.lstrip("./") == member:
                        extracted = tar.extractfile(info)
                        if extracted is not None:
                            return extracted.read()
            raise FileNotFoundError(f"{member} not in {deb}")
    raise ValueError(f"{deb} has no data.tar member")


def read_rdb_string_vectors(rdb: Path) -> list[list[str]]:
    """Every character vector stored in an R lazy-load database, in file order.

    Each record is a 4-byte big-endian length followed by a zlib stream holding one
    object in R's XDR serialization; records that are not plain character vectors are
    skipped.
    """
    blob = rdb.read_bytes()
    vectors: list[list[str]] = []
    pos = 0
    while pos + 4 < len(blob):
        decomp = zlib.decompressobj()
        payload = decomp.decompress(blob[pos + 4 :])
        consumed = len(blob) - pos - 4 - len(decomp.unused_data)
        pos += 4 + consumed
        strings = unserialize_character_vector(payload)
        if strings is not None:
            vectors.append(strings)
    return vectors


def unserialize_character_vector(payload: bytes) -> list[str] | None:
    """Decode an XDR-serialized R character vector; None for any other object."""
    if not payload.startswith(b"X\n"):
        return None
    pos = 2
    version = struct.unpack_from(">i", payload, pos)[0]
    pos += 12
    if version == 3:
        enc_len = struct.unpack_from(">i", payload, pos)[0]
        pos += 4 + enc_len
    flags, length = struct.unpack_from(">ii", payload, pos)
    pos += 8
    if flags & 0xFF != _STRSXP or flags & _HAS_ATTR_BIT:
        return None
    out: list[str] = []
    for _ in range(length):
        cflags, clen = struct.unpack_from(">ii", payload, pos)
        pos += 8
        if cflags & 0xFF != _CHARSXP:
            return None
        if clen < 0:
            out.append("")
            continue
        out.append(payload[pos : pos + clen].decode("utf-8", errors="replace"))
        pos += clen
    return out


def load_books(cache_dir: Path) -> list[Book]:
    """The six novels, each titled by its first non-empty line."""
    books = []
    for lines in read_rdb_string_vectors(fetch_rdb(cache_dir)):
        if len(lines) < 1000:
            continue
        title = next((line.strip() for line in lines if line.strip()), "untitled")
        books.append(Book(title=title, lines=lines))
    if not books:
        raise ValueError("no novels found in the janeaustenr data")
    return books


_HEADING = re.compile(
    r"^(chapter|volume|vol\.|the end|finis|by\b|jane austen|\(\d{4}\))", re.IGNORECASE
)
_ROMAN = re.compile(r"^[IVXLC]+\.?$")


def clean_text(text: str) -> str:
    """ASCII-friendly normalisation: Gutenberg _emphasis_ marks and typographic quotes."""
    text = text.replace("_", "")
    for src, dst in (("\u2018", "'"), ("\u2019", "'"), ("\u201c", '"'), ("\u201d", '"'),
                     ("\u2014", "--"), ("\u2013", "-"), ("\u00a0", " ")):
        text = text.replace(src, dst)
    return re.sub(r"\s+", " ", text).strip()


def paragraphs(book: Book) -> list[str]:
    """Blank-line separated paragraphs, with chapter headings and the title dropped."""
    out: list[str] = []
    current: list[str] = []
    for line in [*book.lines, ""]:
        if line.strip():
            current.append(line.strip())
            continue
        if current:
            para = clean_text(" ".join(current))
            current = []
            if para == book.title or _ROMAN.match(para) or (_HEADING.match(para) and len(para) < 60):
                continue
            if len(para) > 1 and not para.isupper():
                out.append(para)
    return out


def _is_speech(para: str) -> bool:
    return para.startswith('"') and len(para) < 600


def dialogue_pairs(paras: list[str]) -> list[tuple[str, str]]:
    """Consecutive spoken paragraphs as (said, reply) pairs for chat-style samples."""
    pairs = []
    for said, reply in zip(paras, paras[1:], strict=False):
        if _is_speech(said) and _is_speech(reply):
            pairs.append((_unquote(said), _unquote(reply)))
    return pairs


def _unquote(para: str) -> str:
    """Drop the outer quotes of a spoken paragraph (narration between quotes stays)."""
    text = para[1:] if para.startswith('"') else para
    return text[:-1] if text.endswith('"') and text.count('"') % 2 == 1 else text
