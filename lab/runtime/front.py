"""The coordinator's public face: nginx (Debian's package) terminating TLS in front of the
SuperLink's Fleet API and the tracking server, both of which listen on loopback only.

Flower 1.41 serves its Fleet, Control and Runtime APIs on one port, and the Runtime API is not
authenticated. So the SuperLink stays on loopback, and nginx passes on to it only the Fleet API
(``/v1/fleet/``, which nodes use, authenticated by their keys): the Control and Runtime APIs cannot
be reached from another host. A second server block puts the tracking server (MLflow, with its own
accounts) behind the same certificate.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from lab.errors import RuntimeStartError
from lab.runtime.environ import private_environ
from lab.runtime.processes import LOOPBACK, LoggedProcess, Started, start_logged, stop_trees

__all__ = ["Front", "nginx_executable"]

FLEET_PATH = "/v1/fleet/"


def nginx_executable() -> str:
    """Debian's nginx; an error saying how to install it when it is missing."""
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").is_file() else None)
    if found is None:
        raise RuntimeStartError(
            "the coordinator's TLS front is nginx, which is not installed on this host; install it "
            "(`apt-get install nginx-light`) and start the coordinator again"
        )
    return found


@dataclass
class Front(Started):
    """nginx on ``host``: TLS on ``fleet_port`` to the SuperLink at ``superlink_port`` (Fleet API only),
    and on ``tracking_port`` to the tracking server at ``tracking_port_inside`` (0: none)."""

    home: Path
    host: str
    fleet_port: int
    superlink_port: int
    certificate: Path
    key: Path
    ca: Path
    tracking_port: int = 0
    tracking_port_inside: int = 0
    process: LoggedProcess | None = field(default=None, init=False)

    def config(self) -> str:
        """nginx's configuration: only the Fleet API and the tracking server face the network."""
        tracking = ""
        if self.tracking_port:
            tracking = f"""
    server {{
        listen {self.host}:{self.tracking_port} ssl;
        ssl_certificate {self.certificate};
        ssl_certificate_key {self.key};
        client_max_body_size 0;
        location / {{
            proxy_pass http://{LOOPBACK}:{self.tracking_port_inside};
            proxy_set_header Host $host;
            proxy_read_timeout 300s;
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_max_temp_file_size 0;
        }}
    }}"""
        return f"""# Written by `lab coordinator start`; regenerated at every start.
daemon off;
worker_processes 1;
pid {self.home / "nginx.pid"};
error_log {self.home / "nginx-error.log"} warn;
events {{ worker_connections 256; }}
http {{
    access_log {self.home / "nginx-access.log"};
    client_body_temp_path {self.home / "tmp"};
    proxy_temp_path {self.home / "tmp"};
    fastcgi_temp_path {self.home / "tmp"};
    uwsgi_temp_path {self.home / "tmp"};
    scgi_temp_path {self.home / "tmp"};
    server {{
        listen {self.host}:{self.fleet_port} ssl;
        ssl_certificate {self.certificate};
        ssl_certificate_key {self.key};
        client_max_body_size 0;
        location {FLEET_PATH} {{
            proxy_pass https://{LOOPBACK}:{self.superlink_port};
            proxy_ssl_trusted_certificate {self.ca};
            proxy_ssl_verify on;
            proxy_ssl_name localhost;  # the certificate names localhost; nginx matches names, not IPs
            proxy_http_version 1.1;
            proxy_read_timeout 300s;
            # Stream both ways: no temporary files (nginx's workers may not write to the home).
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_max_temp_file_size 0;
        }}
        location / {{ return 404; }}
    }}{tracking}
}}
"""

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "tmp").mkdir(exist_ok=True)
        conf = self.home / "nginx.conf"
        conf.write_text(self.config(), encoding="utf-8")
        self.process = start_logged(
            "front",
            [nginx_executable(), "-p", str(self.home), "-c", str(conf)],
            env=private_environ(),
            log_path=self.home / "nginx.log",
            cwd=self.home,
        )
        self.process.wait_listening(self.fleet_port, host=self.host)

    def stop(self) -> None:
        if self.process is not None:
            stop_trees([self.process])
            self.process = None
