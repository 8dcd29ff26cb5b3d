#!/usr/bin/env python3
"""Checks docker-compose.yml against the code and the images it runs.

What `docker compose config` cannot know, and what went wrong before:
- every EMOSATION_* variable given to an emosation service is one that the
  service's `--help` lists (or EMOSATION_LOG_LEVEL, read by the logger), so a
  misspelt or removed flag is caught instead of silently ignored;
- Kafka keeps its log on the mounted volume (KAFKA_LOG_DIRS is the mount's
  target) with a fixed CLUSTER_ID, and does not expire group offsets;
- every named volume is declared, and no service relies on an anonymous one;
- healthchecks have a start_period; the gateway mounts deploy/nginx, raises
  its open-file limit and publishes on a configurable (loopback) address;
- the JWT secret comes from .env (scripts/compose-env), never a fixed value;
- TLS: the gateway mounts its certificate directory, made first by the
  one-shot gateway-tls service, and publishes HTTPS beside HTTP;
- Prometheus scrapes /metrics of every emosation service (and nothing
  else), Grafana is provisioned from deploy/grafana, and neither publishes
  on every interface.

Usage: compose_lint.py docker-compose.yml path/to/emosation
"""

import os
import re
import subprocess
import sys

import yaml


def fail(msg):
    print(f"compose-check: {msg}", file=sys.stderr)
    sys.exit(1)


def env_of(service):
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, None) for e in env)
    return env


def help_env_vars(binary, subcommand):
    out = subprocess.run([binary, subcommand, "--help"], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        fail(f"`{binary} {subcommand} --help` failed: {out.stderr}")
    return set(re.findall(r"\[env: (EMOSATION_[A-Z0-9_]+)", out.stdout))


def source_of(vol):
    """A volume's source, with ${VAR:-default} read as its default."""
    if not isinstance(vol, str):
        return vol.get("source", "")
    m = re.match(r"\$\{[A-Z0-9_]+:-([^}]*)\}:", vol)
    return m.group(1) if m else vol.split(":", 1)[0]


def main():
    path, binary = sys.argv[1], sys.argv[2]
    with open(path) as f:
        doc = yaml.safe_load(f)
    services = doc["services"]
    declared_volumes = set((doc.get("volumes") or {}).keys())
    problems = []

    for name, svc in services.items():
        hc = svc.get("healthcheck")
        if hc and "start_period" not in hc:
            problems.append(f"{name}: healthcheck without start_period")
        for vol in svc.get("volumes") or []:
            source = source_of(vol)
            if ":" not in str(vol) and isinstance(vol, str):
                problems.append(f"{name}: anonymous volume {vol}")
            elif not source.startswith((".", "/")) and source not in declared_volumes:
                problems.append(f"{name}: volume {source} is not declared")

        # A one-shot job on the image (its own entrypoint) is no service.
        if svc.get("image") == "emosation:local" and not svc.get("entrypoint"):
            command = svc.get("command") or ["serve"]
            sub = command[0]
            known = help_env_vars(binary, sub) | {"EMOSATION_LOG_LEVEL"}
            for var in env_of(svc):
                if var.startswith("EMOSATION_") and var not in known:
                    problems.append(f"{name}: {var} is not a flag of `emosation {sub}` (see --help)")
            if "nofile" not in (svc.get("ulimits") or {}):
                problems.append(f"{name}: no nofile ulimit")

    with open(path) as f:
        raw = f.read()
    if not re.search(r"EMOSATION_JWT_SECRET: \$\{EMOSATION_JWT_SECRET:\?[^}]*compose-env", raw):
        problems.append("the JWT secret must come from .env, made by scripts/compose-env")

    kafka = services.get("kafka") or fail("no kafka service")
    kenv = env_of(kafka)
    log_dirs = kenv.get("KAFKA_LOG_DIRS")
    mounts = {v.split(":")[1] for v in kafka.get("volumes") or [] if isinstance(v, str) and ":" in v}
    if log_dirs not in mounts:
        problems.append(f"kafka: KAFKA_LOG_DIRS={log_dirs!r} is not a mounted volume {sorted(mounts)} (the log would live in the container)")
    if not kenv.get("CLUSTER_ID"):
        problems.append("kafka: no fixed CLUSTER_ID")
    if int(kenv.get("KAFKA_OFFSETS_RETENTION_MINUTES", 0) or 0) < 60 * 24 * 365 * 100:
        problems.append("kafka: group offsets expire (set KAFKA_OFFSETS_RETENTION_MINUTES)")
    if str(kenv.get("KAFKA_LOG_RETENTION_MS")) != "-1":
        problems.append("kafka: the log must be kept forever (KAFKA_LOG_RETENTION_MS: -1)")

    analyzer = services.get("analyzer") or {}
    if "host.docker.internal:host-gateway" not in (analyzer.get("extra_hosts") or []):
        problems.append("analyzer: host.docker.internal needs extra_hosts host-gateway on Linux")

    gw = services.get("gateway") or fail("no gateway service")
    if not any("deploy/nginx" in str(v) for v in gw.get("volumes") or []):
        problems.append("gateway: deploy/nginx is not mounted")
    if "nofile" not in (gw.get("ulimits") or {}):
        problems.append("gateway: no nofile ulimit")
    for port in gw.get("ports") or []:
        if not str(port).startswith("${EMOSATION_GATEWAY_BIND"):
            problems.append(f"gateway: port {port} publishes on every interface")

    tls_mounts = [v for v in gw.get("volumes") or [] if str(v).endswith(":/etc/nginx/tls:ro")]
    if not tls_mounts:
        problems.append("gateway: the TLS directory is not mounted at /etc/nginx/tls (read-only)")
    if (gw.get("depends_on") or {}).get("gateway-tls", {}).get("condition") != "service_completed_successfully":
        problems.append("gateway: must wait for gateway-tls to have its certificate")
    maker = services.get("gateway-tls") or {}
    made = {source_of(v) for v in maker.get("volumes") or []}
    if not tls_mounts or source_of(tls_mounts[0]) not in made:
        problems.append("gateway-tls: does not write the directory the gateway reads")
    if not any(str(p).endswith(":8443") for p in gw.get("ports") or []):
        problems.append("gateway: HTTPS (8443) is not published")

    # Prometheus scrapes every emosation service's /metrics, and only those.
    emosation = {n for n, s in services.items() if s.get("image") == "emosation:local" and not s.get("entrypoint")}
    prom = services.get("prometheus") or fail("no prometheus service")
    prom_dir = next((source_of(v) for v in prom.get("volumes") or [] if str(v).endswith(":/etc/prometheus:ro")), None)
    if not prom_dir:
        problems.append("prometheus: deploy/prometheus is not mounted at /etc/prometheus")
    else:
        with open(os.path.join(os.path.dirname(path) or ".", prom_dir, "prometheus.yml")) as f:
            prom_cfg = yaml.safe_load(f)
        scraped = set()
        for job in prom_cfg.get("scrape_configs") or []:
            if job.get("metrics_path", "/metrics") != "/metrics":
                problems.append(f"prometheus: job {job.get('job_name')} scrapes {job.get('metrics_path')}")
            for sc in job.get("static_configs") or []:
                scraped |= {t.split(":")[0] for t in sc.get("targets") or []}
        if scraped != emosation:
            problems.append(f"prometheus scrapes {sorted(scraped)}, the emosation services are {sorted(emosation)}")
    graf = services.get("grafana") or fail("no grafana service")
    for want in ("./deploy/grafana/provisioning:", "./deploy/grafana/dashboards:"):
        if not any(str(v).startswith(want) for v in graf.get("volumes") or []):
            problems.append(f"grafana: {want[:-1]} is not mounted")
    for name in ("prometheus", "grafana"):
        for port in services[name].get("ports") or []:
            if not str(port).startswith("${EMOSATION_"):
                problems.append(f"{name}: port {port} publishes on every interface")

    if problems:
        fail("\n  " + "\n  ".join(problems))
    print(f"compose-check: {len(services)} services consistent with {binary}")


if __name__ == "__main__":
    main()
