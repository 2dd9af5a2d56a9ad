#!/usr/bin/env python3
"""Obtain the pinned llama.cpp tree into vendor/llama.cpp and apply patches/.

Run by the build (CMakeLists.txt) and usable by hand:

    python vendor/fetch.py            # make sure vendor/llama.cpp is there and patched
    python vendor/fetch.py --check    # exit 1 if it is missing or stale, change nothing

The pin lives in vendor/pin.toml. The sdist is downloaded once into vendor/downloads/ (or taken
from $LLAMA_WEBGPU_SDIST), its sha256 verified, and the parts of the tree the build needs are
unpacked. Patches are listed in patches/series and applied with `git apply`; a patch that does
not apply stops the build. A stamp file records what was unpacked and applied, so a second run
does nothing, and a change to the patches restores only the files they touch and gives back
their old mtime to those whose content comes out the same, keeping rebuilds incremental.
"""

from __future__ import annotations

import argparse
import hashlib
import html.parser
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import urllib.parse
import urllib.request
from pathlib import Path

VENDOR = Path(__file__).resolve().parent
ROOT = VENDOR.parent
TREE = VENDOR / "llama.cpp"
DOWNLOADS = VENDOR / "downloads"
PATCHES = ROOT / "patches"
STAMP = TREE / ".llama-webgpu-stamp.json"


class FetchError(RuntimeError):
    pass


def load_pin() -> dict:
    with open(VENDOR / "pin.toml", "rb") as f:
        return tomllib.load(f)["llama_cpp"]


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.links += [v for k, v in attrs if k == "href" and v]


def _index_urls() -> list[str]:
    urls = [os.environ.get("PIP_INDEX_URL") or "https://pypi.org/simple/"]
    try:
        out = subprocess.run(
            [sys.executable, "-m", "pip", "config", "get", "global.index-url"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        if out and out not in urls:
            urls.insert(0, out)
    except OSError:
        pass
    return [u if u.endswith("/") else u + "/" for u in urls]


def download(pin: dict, dest: Path) -> None:
    """Find the sdist on a simple index (PEP 503) and download it to dest."""
    errors = []
    for index in _index_urls():
        page_url = urllib.parse.urljoin(index, pin["package"] + "/")
        try:
            with urllib.request.urlopen(page_url, timeout=60) as r:
                parser = _Links()
                parser.feed(r.read().decode("utf-8", "replace"))
        except OSError as e:
            errors.append(f"{page_url}: {e}")
            continue
        for link in parser.links:
            url = urllib.parse.urljoin(page_url, link)
            if urllib.parse.urlparse(url).path.rsplit("/", 1)[-1] == pin["filename"]:
                print(f"fetch: downloading {url.split('#')[0]}", flush=True)
                tmp = dest.with_suffix(".part")
                with urllib.request.urlopen(url, timeout=300) as r, open(tmp, "wb") as f:
                    shutil.copyfileobj(r, f, 1 << 20)
                tmp.replace(dest)
                return
        errors.append(f"{page_url}: no link to {pin['filename']}")
    raise FetchError(
        f"could not download {pin['filename']} ({'; '.join(errors)}).\n"
        f"Download it yourself (pip download --no-deps --no-binary :all: "
        f"{pin['package']}=={pin['version']}) and set LLAMA_WEBGPU_SDIST to its path."
    )


def archive(pin: dict) -> Path:
    """The verified sdist, downloading it if needed."""
    given = os.environ.get("LLAMA_WEBGPU_SDIST")
    path = Path(given) if given else DOWNLOADS / pin["filename"]
    if not path.exists():
        if given:
            raise FetchError(f"LLAMA_WEBGPU_SDIST={given} does not exist")
        DOWNLOADS.mkdir(parents=True, exist_ok=True)
        download(pin, path)
    digest = sha256_of(path)
    if digest != pin["sha256"]:
        raise FetchError(
            f"{path} has sha256 {digest}, the pin in vendor/pin.toml says {pin['sha256']}; "
            "delete the file to download it again"
        )
    return path


def extract(pin: dict, src: Path, target: Path, only: set[str] | None = None) -> None:
    """Unpack the kept parts of the tree (or just the files in `only`) into target."""
    prefix = pin["path"].rstrip("/") + "/"
    keep = tuple(pin["keep"])
    with tarfile.open(src) as tar:
        for member in tar:
            if not member.name.startswith(prefix):
                continue
            rel = member.name[len(prefix) :]
            if not rel or rel.split("/", 1)[0] not in keep:
                continue
            if only is not None and rel not in only:
                continue
            member.name = rel
            tar.extract(member, target, filter="data")


def patch_series() -> list[Path]:
    series = PATCHES / "series"
    if not series.exists():
        return []
    names = [ln.split("#", 1)[0].strip() for ln in series.read_text().splitlines()]
    return [PATCHES / n for n in names if n]


def touched_files(patch: Path) -> set[str]:
    files = set()
    for line in patch.read_text().splitlines():
        for tag in ("--- a/", "+++ b/"):
            if line.startswith(tag):
                files.add(line[len(tag) :].split("\t")[0].strip())
    return files


def git_apply(patch: Path, check: bool) -> subprocess.CompletedProcess:
    # Keep git from discovering our own repository around vendor/llama.cpp.
    env = dict(os.environ, GIT_CEILING_DIRECTORIES=str(VENDOR))
    args = ["git", "apply", "--whitespace=nowarn"] + (["--check"] if check else []) + [str(patch)]
    return subprocess.run(args, cwd=TREE, env=env, capture_output=True, text=True)


def apply_patches(patches: list[Path]) -> None:
    for p in patches:
        if not p.exists():
            raise FetchError(f"patches/series names {p.name}, which does not exist")
        res = git_apply(p, check=True)
        if res.returncode == 0:
            res = git_apply(p, check=False)
        if res.returncode != 0:
            raise FetchError(f"patch {p.name} does not apply to llama.cpp:\n{res.stderr}")
        print(f"fetch: applied {p.name}", flush=True)


def snapshot(files: set[str]) -> dict[str, tuple[str, int]]:
    """Content digest and mtime of each of the tree's files that exists."""
    found = {}
    for rel in files:
        path = TREE / rel
        if path.is_file():
            found[rel] = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
    return found


def keep_mtimes(before: dict[str, tuple[str, int]]) -> None:
    """Give back their old mtime to files that came out of a restore with the same content, so a
    changed patch series recompiles only what it changed (not every file any patch touches)."""
    for rel, (digest, mtime) in before.items():
        path = TREE / rel
        if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == digest:
            os.utime(path, ns=(mtime, mtime))


def wanted_stamp(pin: dict, patches: list[Path]) -> dict:
    return {
        "sha256": pin["sha256"],
        "keep": sorted(pin["keep"]),
        "patches": [[p.name, sha256_of(p) if p.exists() else ""] for p in patches],
    }


def prepare(check_only: bool = False) -> bool:
    """Make TREE match the pin and the patch series. Returns True if it already did."""
    pin = load_pin()
    patches = patch_series()
    want = wanted_stamp(pin, patches)
    have = json.loads(STAMP.read_text()) if STAMP.exists() else None
    if have is not None and {k: have.get(k) for k in want} == want:
        return True
    if check_only:
        return False
    src = archive(pin)
    if have is not None and have["sha256"] == want["sha256"] and have["keep"] == want["keep"]:
        # Same tree, other patches: restore just the files any old or new patch touches.
        restore = set(have.get("touched", []))
        for p in patches:
            restore |= touched_files(p)
        print(f"fetch: patches changed, restoring {len(restore)} files", flush=True)
        unchanged_if_same = snapshot(restore)
        for rel in restore:
            (TREE / rel).unlink(missing_ok=True)
        extract(pin, src, TREE, only=restore)
    else:
        unchanged_if_same = {}
        print(f"fetch: unpacking llama.cpp from {src.name}", flush=True)
        if TREE.exists():
            shutil.rmtree(TREE)
        tmp = Path(tempfile.mkdtemp(dir=VENDOR, prefix=".unpack-"))
        try:
            extract(pin, src, tmp)
            tmp.replace(TREE)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    apply_patches(patches)
    keep_mtimes(unchanged_if_same)
    want["touched"] = sorted(set().union(*(touched_files(p) for p in patches)) if patches else [])
    STAMP.write_text(json.dumps(want, indent=1) + "\n")
    return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only report whether the tree is current")
    args = ap.parse_args()
    try:
        current = prepare(check_only=args.check)
    except FetchError as e:
        print(f"vendor/fetch.py: error: {e}", file=sys.stderr)
        return 2
    if args.check:
        print("vendor/llama.cpp is current" if current else "vendor/llama.cpp is missing or stale")
        return 0 if current else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
