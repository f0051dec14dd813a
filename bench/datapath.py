"""The data path end to end: one legacy host's tree archived over SSH, stored, downloaded
through the gateway and verified and unpacked as a VM does, against the bare pipe
`ssh host tar -c | zstd | zstd -d | tar -x` in the same run.

The legacy host is a network namespace running sshd (tests/integration/legacy_netns.py; it
serves this machine's files, so its tree is bench/archive.py's generated one, under
/tmp/ferry-dp-tree). The VM side is a second namespace, reaching the gateway over its veth.
Timed, each on its own, after one warm-up read of the tree:

- archiver: `archive_path(SshTree)` into an archive store folder (tar over SSH, zstd, tee,
  sha256sum, fsync); baseline `ssh host tar -c | zstd -T0 -3 > file`;
- download: curl in the VM's namespace fetching the archive from the real gateway (a Host with
  no services, the VM's token, the archive's record); baseline nginx (Debian's, sendfile on)
  serving the same file, fetched the same way;
- vm: the configure script's own `fetch_checked | unpack_into` (cut out of its templates, run by
  bash in the VM's namespace as root, into a temp folder): download, sha256 and unpack;
- whole: archiver + vm, as a migration runs them; baseline the bare pipe.

MB/s are of tree bytes (the download's too, so stages compare); best of `--repeats` (of at
least 3 for the download and nginx, seconds each and the noisiest).

    .venv/bin/python -m bench.datapath --size-mb 1024        # --size-mb 256 for a quicker run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp

from bench.archive import generate
from bench.common import (OPERATOR_TOKEN, append_row, bench_settings, clean_up, finish,
                          free_port, now_stamp, plot_path, pyplot)
from bench.pipeline import plan_text
from services.archiver.archive import ZSTD, archive_path
from services.archiver.ssh import SshTree
from services.runtime import Host
from shared.logging import configure_logging
from shared.store.archives import ArchiveRecord
from shared.store.session import Session
from tests.integration import legacy_netns

TREE = Path("/tmp/ferry-dp-tree")
TEMPLATES = Path(__file__).resolve().parent.parent / "services/configurator/templates"
# The VM side's download and unpack, in the order they are defined (reporting.sh: how the
# script talks to the gateway; configure.sh: the archive's download, check and unpack).
FUNCTIONS = {"reporting.sh.mustache": ("json_str", "gateway_config", "gateway", "post_json",
                                         "message_update"),
             "configure.sh.mustache": ("fetch_resumed", "fetch_checked", "unpack_into")}
NGINX_CONF = """daemon off;
master_process off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log error;
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    server {{
        listen {address}:{port};
        root {root};
    }}
}}
"""


def vm_functions() -> str:
    """The templates' own definitions of the VM side's functions (no mustache tag in them)."""
    found = []
    for template, names in FUNCTIONS.items():
        text = (TEMPLATES / template).read_text()
        for name in names:
            match = re.search(rf"^{name}\(\) {{\n.*?^}}\n", text, re.M | re.S)
            if match is None:
                raise RuntimeError(f"{name} is not defined in {template}")
            found.append(match.group(0))
    return "\n".join(found)


def timed(argv: list[str], **kwargs) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, **kwargs)
    return time.perf_counter() - t0


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


async def start_nginx(work: Path, root: Path, address: str) -> tuple[subprocess.Popen, str]:
    """Debian's nginx serving `root` on `address` with sendfile, its own config in `work`."""
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "nginx-light"],
                       check=True, capture_output=True)
    port = free_port()
    conf = work / "nginx.conf"
    conf.write_text(NGINX_CONF.format(work=work, address=address, port=port, root=root))
    nginx = subprocess.Popen(["/usr/sbin/nginx", "-e", str(work / "nginx-error.log"), "-p",
                              str(work), "-c", str(conf)], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://{address}:{port}"
    deadline = time.monotonic() + 10
    while True:
        try:
            _, writer = await asyncio.open_connection(address, port)
            writer.close()
            return nginx, url
        except OSError:
            if nginx.poll() is not None or time.monotonic() > deadline:
                nginx.kill()
                raise RuntimeError(f"nginx did not start: {nginx.stderr.read().decode()}")
            await asyncio.sleep(0.05)


async def gateway_with_archive(host: Host, settings, archive) -> tuple[str, str, str]:
    """One VM (in `configuring`, its token issued) owning `archive`: (vm id, token, its URL)."""
    async with aiohttp.ClientSession(
            base_url=settings.gateway_url,
            headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}) as operator:
        async with operator.post("/v1/groups", data=plan_text("datapath", 0, 1)) as answer:
            assert answer.status == 201, await answer.text()
    async with host.pool.acquire() as conn:
        await conn.execute("UPDATE vms SET state = 'configuring', step = 'pxe-boot'")
        vm_id = await conn.fetchval("SELECT id FROM vms")
        session = Session(conn)
        token = await session.tokens.issue(vm_id)
        archive_id = f"{vm_id}-data"
        await session.archives.save(ArchiveRecord(
            id=archive_id, vm_id=vm_id, kind="path", source="/data", engine=None,
            file=str(archive.file), sha256=archive.sha256, size=archive.size))
    return str(vm_id), token, f"{settings.gateway_url}/v1/archives/{vm_id}/{archive_id}"


def curl_seconds(namespace: str, url: str, token: str | None, size: int) -> float:
    """curl in `namespace` fetching `url` to /dev/null; checks it got `size` bytes."""
    argv = ["ip", "netns", "exec", namespace, "curl", "-sS", "-f", "-o", "/dev/null",
            "-w", "%{size_download}"]
    if token:
        argv += ["-H", f"Authorization: Bearer {token}"]
    t0 = time.perf_counter()
    done = subprocess.run([*argv, url], check=True, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if int(done.stdout) != size:
        raise RuntimeError(f"{url} gave {done.stdout} bytes, not {size}")
    return elapsed


def vm_side_seconds(namespace: str, work: Path, target: Path, url: str, sha256: str,
                    vm_id: str, token: str, gateway_url: str) -> float:
    """The script's fetch_checked | unpack_into, run by bash in the VM's namespace."""
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    script = work / "vm-side.sh"
    script.write_text("set -o errexit -o nounset -o pipefail\n" + vm_functions()
                      + "\ngateway_config"  # the curl config the script makes as it starts
                      + f"\nfetch_checked {shlex.quote(url)} {sha256} 'archive of /data' |"
                        f" unpack_into {shlex.quote(str(target))}\n")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "WORK": str(work),
           "FERRY_GATEWAY": gateway_url, "FERRY_VM_ID": vm_id, "FERRY_TOKEN": token}
    return timed(["ip", "netns", "exec", namespace, "bash", str(script)], env=env)


def bare_pipe_seconds(tree: SshTree, data: Path, target: Path) -> float:
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    ssh = shlex.join(tree.ssh_argv(shlex.join(["tar", "-cf", "-", "-C", str(data), "."])))
    return timed(["bash", "-o", "pipefail", "-c",
                  f"{ssh} | {shlex.join(ZSTD)} | zstd -dc | tar -x -C {shlex.quote(str(target))}"])


def ssh_tar_zstd_seconds(tree: SshTree, data: Path, out: Path) -> float:
    ssh = shlex.join(tree.ssh_argv(shlex.join(["tar", "-cf", "-", "-C", str(data), "."])))
    return timed(["bash", "-o", "pipefail", "-c",
                  f"{ssh} | {shlex.join(ZSTD)} > {shlex.quote(str(out))}"])


def tree_totals(folder: Path) -> tuple[int, int]:
    """(files, bytes) under `folder`: an unpacked copy must have the tree's."""
    files = size = 0
    for path in folder.rglob("*"):
        if path.is_file():
            files += 1
            size += path.stat().st_size
    return files, size


def check_copy(copy: Path, files: int, total: int, what: str) -> None:
    got = tree_totals(copy)
    if got != (files, total):
        raise RuntimeError(f"{what} unpacked {got[0]} files, {got[1]} bytes; the tree has "
                           f"{files} files, {total} bytes")


async def measure(size_mb: int, repeats: int, quiet: bool = True, tree_root: Path = TREE) -> dict:
    t0 = time.perf_counter()
    data, total, files = generate(size_mb, tree_root)
    generated_s = time.perf_counter() - t0
    settings = bench_settings("datapath")
    if quiet:
        configure_logging(settings)
    work = Path(tempfile.mkdtemp(prefix="ferry-dp-"))
    store = work / "store"
    runs: dict[str, list[float]] = {k: [] for k in (
        "archiver", "ssh_tar_zstd", "download", "nginx", "vm", "bare_pipe")}
    loads = [loadavg()]
    async with AsyncExitStack() as stack:
        stack.callback(shutil.rmtree, work, True)
        legacy = legacy_netns.start(work / "legacy", prefix="dp")
        stack.callback(legacy_netns.stop, legacy)
        vm_ns, vm_link, here, _ = legacy_netns.joined_namespace("dv")
        stack.callback(legacy_netns.stop_namespace, vm_ns, vm_link)
        tree = await SshTree(host=legacy.address, port=22, user="root", key_file=legacy.key_file,
                             known_hosts=work / "known_hosts").probe()
        port = free_port()
        settings = settings.model_copy(update={
            "gateway_host": here, "gateway_port": port, "gateway_url": f"http://{here}:{port}"})
        stack.push_async_callback(clean_up, settings)
        host = Host(settings, [], gateway=True)
        await host.start()
        stack.push_async_callback(host.stop, timeout=5)
        nginx, nginx_url = await start_nginx(work, store, here)
        stack.callback(lambda: (nginx.kill(), nginx.wait()))

        timed(["bash", "-c", f"tar -cf - -C {shlex.quote(str(data))} . > /dev/null"])  # warm
        dest, archive = store / "data.tar.zst", None
        for _ in range(repeats):
            t = time.perf_counter()
            archive = await archive_path(tree, str(data), [], dest)
            runs["archiver"].append(time.perf_counter() - t)
            loads.append(loadavg())
            runs["ssh_tar_zstd"].append(ssh_tar_zstd_seconds(tree, data, work / "pipe.tar.zst"))
            loads.append(loadavg())
        (work / "pipe.tar.zst").unlink(missing_ok=True)
        vm_id, token, url = await gateway_with_archive(host, settings, archive)
        # Seconds each and the noisiest stage on a shared machine: at least 3 of each,
        # alternating which goes first.
        fetches = {"download": (url, token), "nginx": (f"{nginx_url}/{dest.name}", None)}
        for i in range(max(3, repeats)):
            for name in (("download", "nginx") if i % 2 == 0 else ("nginx", "download")):
                runs[name].append(await asyncio.to_thread(
                    curl_seconds, vm_ns, *fetches[name], archive.size))
            loads.append(loadavg())
        for _ in range(repeats):
            runs["vm"].append(await asyncio.to_thread(
                vm_side_seconds, vm_ns, work, work / "unpacked", url, archive.sha256, vm_id,
                token, settings.gateway_url))
            loads.append(loadavg())
            check_copy(work / "unpacked", files, total, "the VM side")
            shutil.rmtree(work / "unpacked", ignore_errors=True)
            runs["bare_pipe"].append(await asyncio.to_thread(
                bare_pipe_seconds, tree, data, work / "bare"))
            loads.append(loadavg())
            check_copy(work / "bare", files, total, "the bare pipe")
            shutil.rmtree(work / "bare", ignore_errors=True)
    best = {k: min(v) for k, v in runs.items()}
    best["whole"] = best["archiver"] + best["vm"]
    mbps = {k: total / 1e6 / s for k, s in best.items()}
    return {"size_mb": size_mb, "bytes": total, "files": files, "generated_s": generated_s,
            "archive_bytes": archive.size, "repeats": repeats, "seconds": runs,
            "best_s": best, "mb_per_s": mbps, "loadavg_1min": loads,
            "ratio_archiver_to_ssh_tar_zstd": mbps["archiver"] / mbps["ssh_tar_zstd"],
            "ratio_download_to_nginx": mbps["download"] / mbps["nginx"],
            "ratio_whole_to_bare_pipe": mbps["whole"] / mbps["bare_pipe"]}


def report(run: dict, started: str) -> None:
    m = run["mb_per_s"]
    append_row("datapath", [
        "date (UTC)", "tree MB", "files", "archiver MB/s", "ssh tar|zstd MB/s", "download MB/s",
        "nginx MB/s", "vm fetch+check+unpack MB/s", "whole MB/s", "bare pipe MB/s",
        "archiver/ssh tar|zstd", "download/nginx", "whole/bare pipe", "load (max 1 min)"],
        [started, round(run["bytes"] / 1e6), run["files"], m["archiver"], m["ssh_tar_zstd"],
         m["download"], m["nginx"], m["vm"], m["whole"], m["bare_pipe"],
         run["ratio_archiver_to_ssh_tar_zstd"], run["ratio_download_to_nginx"],
         run["ratio_whole_to_bare_pipe"], max(run["loadavg_1min"])])
    plot(run)


def plot(run: dict) -> None:
    """docs/performance/datapath.png: MB/s of each stage and its baseline."""
    m = run["mb_per_s"]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    names = ["archiver", "ssh_tar_zstd", "download", "nginx", "vm", "whole", "bare_pipe"]
    ax.bar(["archiver", "ssh tar|zstd", "gateway\ndownload", "nginx\nsendfile",
            "VM fetch,\ncheck, unpack", "whole", "bare pipe"], [m[n] for n in names],
           color=["#48c", "#aaa", "#48c", "#aaa", "#48c", "#236", "#666"])
    ax.set_ylabel("MB/s of tree bytes")
    ax.tick_params(axis="x", labelsize=7)
    ax.set_title(f"data path: {run['bytes'] / 1e6:.0f} MB, {run['files']} files "
                 f"(best of {run['repeats']})")
    fig.tight_layout()
    fig.savefig(plot_path("datapath"), dpi=110)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=1, help="best of this many, each way")
    parser.add_argument("--no-report", action="store_true")
    args = parser.parse_args(argv)
    started = now_stamp()
    run = asyncio.run(measure(args.size_mb, args.repeats))
    print(json.dumps(run, default=str), flush=True)
    return finish("datapath", args, started, [run], lambda: report(run, started))


if __name__ == "__main__":
    main()
