#!/bin/bash
# web: nginx in front of the api machine, which it reaches at its private address ($1).
set -euo pipefail
api_ip="$1"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq --no-install-recommends nginx >/dev/null
cat > /etc/nginx/sites-available/default <<EOF2
server {
    listen 80 default_server;
    location / { return 200 "web on $(hostname)\n"; }
    location /api/ { proxy_pass http://${api_ip}:9000/; }
}
EOF2
nginx -t
systemctl enable nginx
systemctl restart nginx
