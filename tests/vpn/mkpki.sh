#!/bin/sh
# mkpki.sh DIR [N_CLIENTS]
# Throwaway PKI for VPN integration tests (openssl CLI only, ~0.1 s total).
#   DIR/ca.crt ca.key            self-signed CA (EC P-256, 1 day)
#   DIR/server.crt server.key    CN=server, SAN IP:127.0.0.1 DNS:localhost,
#                                EKU serverAuth (OpenVPN remote-cert-tls server,
#                                GnuTLS/ocserv and openconnect all accept it)
#   DIR/clientI.crt clientI.key  CN=clientI, EKU clientAuth, I = 1..N
#   DIR/tc.key                   OpenVPN tls-crypt key (openvpn --genkey)
#   DIR/server.pin               openconnect --servercert value (pin-sha256:...)
# No DH params: OpenVPN uses `dh none` (ECDHE only); ocserv needs none.
set -eu
DIR=${1:?usage: mkpki.sh DIR [N_CLIENTS]}
N=${2:-3}
mkdir -p "$DIR"
cd "$DIR"
umask 077

genkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

genkey ca.key
openssl req -x509 -new -key ca.key -sha256 -days 1 -subj "/CN=seatgate-test-ca" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.crt

# issue NAME CN EXTFILE-CONTENT
issue() {
    genkey "$1.key"
    openssl req -new -key "$1.key" -subj "/CN=$2" -out "$1.csr"
    printf '%s\n' "$3" > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
        -sha256 -days 1 -extfile "$1.ext" -out "$1.crt" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
}

issue server server "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyAgreement
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost"

i=1
while [ "$i" -le "$N" ]; do
    issue "client$i" "client$i" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyAgreement
extendedKeyUsage=clientAuth"
    i=$((i + 1))
done

openvpn --genkey tls-crypt tc.key

# openconnect pin: base64(sha256(SubjectPublicKeyInfo DER))
printf 'pin-sha256:%s\n' "$(openssl x509 -in server.crt -pubkey -noout \
    | openssl pkey -pubin -outform DER | openssl dgst -sha256 -binary | base64)" > server.pin

chmod 0644 ca.crt server.crt client*.crt server.pin
echo "pki ready in $DIR ($N clients)"
