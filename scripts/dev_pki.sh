#!/usr/bin/env bash
# Make a private CA, a server certificate, a client certificate and two tokens, for trying
# a secured nanovl (README "Securing a deployment"). Production: use your own CA / cert-manager.
#
#   scripts/dev_pki.sh DIR [SERVER_NAME ...]
#
# DIR gets ca.crt/ca.key, server.crt/server.key (names: localhost, 127.0.0.1 and every
# SERVER_NAME), client.crt/client.key, inference.token and admin.token (mode 600).
set -euo pipefail
dir=${1:?usage: scripts/dev_pki.sh DIR [SERVER_NAME ...]}
shift
mkdir -p "$dir"
cd "$dir"
umask 077
san="DNS:localhost,IP:127.0.0.1"
for name in "$@"; do
  if [[ $name =~ ^[0-9.]+$ ]]; then san="$san,IP:$name"; else san="$san,DNS:$name"; fi
done
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 365 \
  -subj "/CN=nanovl dev CA" -keyout ca.key -out ca.crt \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
leaf() {  # name, extendedKeyUsage, extra -addext
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$1" \
    -keyout "$1.key" -out "$1.csr" 2>/dev/null
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 -out "$1.crt" \
    -extfile <(printf 'extendedKeyUsage=%s\n%s\n' "$2" "$3") 2>/dev/null
  rm -f "$1.csr"
}
leaf server serverAuth "subjectAltName=$san"
leaf client clientAuth ""
for role in inference admin; do
  [[ -s $role.token ]] || openssl rand -base64 32 | tr '+/' '-_' | tr -d '=\n' > "$role.token"
done
chmod 600 ./*.key ./*.token
echo "wrote $(pwd): ca.crt server.crt/.key client.crt/.key inference.token admin.token"
