"""Build the lab's container images on this machine: ``make images``.

1. The base: ``localhost/fedlab-base:bookworm``, for machines that reach no image registry: Debian
   bookworm made from Debian's own packages (``debootstrap``, then ``podman import``) with the
   CPython that runs this script copied into /usr/local, as the ``python:3.11.x-slim-bookworm``
   images hold theirs. Debian's own python3 (3.11.2) is older than the lock allows (soupsieve
   4.1.2 and others need 3.11.5 or newer). Kept once made; ``--base python:3.11.7-slim-bookworm``
   uses a registry's image instead.
2. The torch wheel: the lock pins torch's CPU build from PyTorch's own index; where that index
   cannot be reached, the machine's copy of the wheel is offered to the build (copied into
   environments/wheels/) after checking that its sha256 is the lock's.
3. ``fedlab-node`` and ``fedlab-coordinator`` from environments/Dockerfile, with the host's
   network (pip reaches PyPI as the host does; a CA bundle the host's pip is told to trust goes in
   as a build secret, never into a layer).

It installs nothing on the host: what is missing (podman, debootstrap) is named with the command
that installs it, and the build stops with status 2.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "environments" / "requirements.lock"
WHEELS = ROOT / "environments" / "wheels"
BASE = "localhost/fedlab-base:bookworm"
IMAGES = {"node": "localhost/fedlab-node:latest", "coordinator": "localhost/fedlab-coordinator:latest"}
TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
DEBIAN_MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
# The base holds what CPython's own modules link to (ssl, sqlite3, ctypes, readline, ...) and CA
# certificates; Tk is left out, as in the slim images.
BASE_PACKAGES = ",".join([
    "ca-certificates", "libssl3", "libffi8", "libsqlite3-0", "libbz2-1.0", "liblzma5", "zlib1g", "libexpat1",
    "libncursesw6", "libreadline8", "libuuid1", "libnsl2", "libtirpc3", "libcrypt1",
])  # fmt: skip
# What of the interpreter's installation stays out of the image: its packages and its test suite.
PYTHON_LEFT_OUT = ("site-packages", "test", "idlelib", "tkinter", "turtledemo", "__pycache__", "*.pyc")
# Podman's defaults that fail in some sandboxes (its default nofile ulimit); read by every podman
# call the lab makes through CONTAINERS_CONF, so nothing under /etc is changed.
CONTAINERS_CONF = ROOT / "environments" / "podman-containers.conf"


class Missing(Exception):
    """Something the build needs is not on this machine: say what and how to get it."""


def engine_env() -> dict[str, str]:
    """The environment for podman: the project's containers.conf unless the caller gave one."""
    return {"CONTAINERS_CONF": str(CONTAINERS_CONF), **os.environ}


def podman(*args: str, check: bool = True, capture: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], check=check, text=True, capture_output=capture, env=engine_env())


def image_exists(name: str) -> bool:
    return podman("image", "exists", name, check=False).returncode == 0


def require(command: str, package: str) -> None:
    if shutil.which(command) is None:
        raise Missing(f"`{command}` is not installed: on Debian, `apt-get install {package}` (as root)")


def make_base() -> None:
    """Debian bookworm from Debian's packages, imported as an image (kept once made)."""
    if image_exists(BASE):
        print(f"base image {BASE}: present")
        return
    require("debootstrap", "debootstrap")
    if os.geteuid() != 0:
        raise Missing("debootstrap needs root to make the base image; run `make images` as root")
    print(f"base image {BASE}: debootstrap bookworm from {DEBIAN_MIRROR} (a few minutes)", flush=True)
    with tempfile.TemporaryDirectory(prefix="fedlab-base-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", "bookworm", str(rootfs), DEBIAN_MIRROR],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        install_python(rootfs)
        shutil.rmtree(rootfs / "var" / "cache" / "apt" / "archives", ignore_errors=True)
        (rootfs / "var" / "cache" / "apt" / "archives" / "partial").mkdir(parents=True)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(
            ["podman", "import", "--change", 'CMD ["/bin/bash"]', "-", BASE],
            stdin=tar.stdout,
            check=True,
            stdout=subprocess.DEVNULL,
            env=engine_env(),
        )
        if tar.wait() != 0:
            raise RuntimeError("tar of the base's root file system failed")


def install_python(rootfs: Path) -> None:
    """Copy the running CPython (its standard library, not its packages) into ``rootfs``/usr/local."""
    wanted = LOCK.read_text(encoding="utf-8").split("# environment: python ", 1)[1].split()[0]
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if here != wanted or sys.version_info < (3, 11, 5):
        raise Missing(f"the base needs CPython {wanted}.5 or newer to copy in; this is {sys.version.split()[0]}")
    source, target = Path(sys.base_prefix), rootfs / "usr" / "local"
    stdlib = f"python{here}"
    shutil.copytree(source / "lib" / stdlib, target / "lib" / stdlib, ignore=shutil.ignore_patterns(*PYTHON_LEFT_OUT))
    (target / "lib" / stdlib / "site-packages").mkdir()
    for library in source.glob("lib/libpython3*.so*"):
        shutil.copy2(library, target / "lib" / library.name, follow_symlinks=False)
    shutil.copy2(source / "bin" / stdlib, target / "bin" / stdlib)
    for alias in ("python3", "python"):
        (target / "bin" / alias).symlink_to(stdlib)
    subprocess.run(["chroot", str(rootfs), "ldconfig"], check=True)
    check = subprocess.run(
        ["chroot", str(rootfs), "/usr/local/bin/python3", "-c", "import ssl, sqlite3, ctypes, venv, lzma, bz2"],
        capture_output=True,
        text=True,
    )
    if check.returncode != 0:
        raise RuntimeError(f"the base's Python cannot load its modules:\n{check.stderr}")


def locked_hashes(name: str) -> tuple[str, set[str]]:
    """The version and sha256 hashes the lock pins for ``name``."""
    text = LOCK.read_text(encoding="utf-8")
    found = re.search(rf"^{re.escape(name)}==(\S+)((?:\s*\\\n\s+--hash=sha256:[0-9a-f]+)+)", text, re.MULTILINE)
    if found is None:
        raise Missing(f"{LOCK.name} pins no {name}")
    return found.group(1), set(re.findall(r"sha256:([0-9a-f]+)", found.group(2)))


def reachable(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=10):
            return True
    except OSError:
        return False


def find_links() -> list[Path]:
    """The folders the host's pip takes wheels from (PIP_FIND_LINKS and pip's configuration)."""
    found = os.environ.get("PIP_FIND_LINKS", "").split()
    config = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False
    ).stdout
    for line in config.splitlines():
        key, _, value = line.partition("=")
        if key.endswith("find-links"):
            found += value.strip("'\" ").split()
    return [Path(f.removeprefix("file://")) for f in found if not f.startswith("http")]


def offer_torch_wheel() -> str:
    """The torch index the build uses: PyTorch's, or none after copying the machine's wheel in."""
    version, hashes = locked_hashes("torch")
    if reachable(f"{TORCH_INDEX}/torch/"):
        print(f"torch {version}: from {TORCH_INDEX}")
        return TORCH_INDEX
    for folder in find_links():
        for wheel in sorted(folder.glob(f"torch-{version}-*.whl")):
            digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
            if digest in hashes:
                WHEELS.mkdir(exist_ok=True)
                target = WHEELS / wheel.name
                if not target.is_file():
                    shutil.copy2(wheel, target)
                print(f"torch {version}: {TORCH_INDEX} cannot be reached; using {wheel} (the lock's sha256)")
                return ""
            print(f"torch: {wheel} is not the lock's file (sha256 {digest[:12]}…); not used")
    raise Missing(
        f"{TORCH_INDEX} cannot be reached and no wheel of torch {version} with the lock's sha256 is in pip's"
        " find-links; put one in environments/wheels/ (or give the build the network to PyTorch's index)"
    )


def pip_ca() -> list[str]:
    """A build secret with the CA bundle the host's pip trusts, if it is told to trust one."""
    cert = os.environ.get("PIP_CERT", "")
    if not cert:
        config = subprocess.run(
            [sys.executable, "-m", "pip", "config", "get", "global.cert"], capture_output=True, text=True, check=False
        )
        cert = config.stdout.strip() if config.returncode == 0 else ""
    return ["--secret", f"id=pip-ca,src={cert}"] if cert and Path(cert).is_file() else []


def build(target: str, base: str, torch_index: str, secrets: list[str]) -> float:
    started = time.monotonic()
    print(f"building {IMAGES[target]} (target {target})", flush=True)
    podman(
        "build", "--network", "host", "--file", "environments/Dockerfile", "--target", target,
        "--build-arg", f"BASE={base}", "--build-arg", f"TORCH_INDEX={torch_index}",
        *secrets, "--tag", IMAGES[target], str(ROOT),
    )  # fmt: skip
    return time.monotonic() - started


def size(image: str) -> str:
    out = podman("image", "inspect", "--format", "{{.Size}}", image, capture=True)
    return f"{int(out.stdout.strip()) / 1e6:,.0f} MB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=BASE, help=f"the base image (default: {BASE}, made here when missing)")
    args = parser.parse_args(argv)
    try:
        require("podman", "podman runc")
        if args.base == BASE:
            make_base()
        torch_index = offer_torch_wheel()
        secrets = pip_ca()
        took = {target: build(target, args.base, torch_index, secrets) for target in IMAGES}
    except Missing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as exc:
        print(f"error: `{' '.join(map(str, exc.cmd))}` failed with status {exc.returncode}", file=sys.stderr)
        return 1
    for target, image in IMAGES.items():
        print(f"{image}: {size(image)}, built in {took[target]:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
