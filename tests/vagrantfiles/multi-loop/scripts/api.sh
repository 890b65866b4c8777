#!/bin/bash
# api: a tiny JSON service on port 9000 (python3 is in the box), started by systemd.
set -euo pipefail
mkdir -p /srv/api
echo '{"service": "api", "ok": true}' > /srv/api/status.json
cat > /etc/systemd/system/api.service <<'UNIT'
[Unit]
Description=api
[Service]
ExecStart=/usr/bin/python3 -m http.server 9000 --directory /srv/api
[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable --now api.service
