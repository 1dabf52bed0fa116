# bench/tls_common.sh: what the TLS rounds (bench/tls.sh, bench/h2.sh) set
# up alike, sourced by both after ../shared/bench/common.sh.
#   tls_state NAME     S=$BENCH_STATE/NAME with its tmp/ and no stale pid
#                      files, and one certificate for every server of the
#                      round (ECDSA P-256, self-signed for localhost and
#                      127.0.0.1, test only): $S/cert.pem, $S/key.pem
#   tls_nginx_conf TITLE LISTEN POOL [EXTRA]
#                      $S/nginx.conf: the harness's nginx_proxy (2
#                      workers, keep-alive upstream of POOL connections to
#                      127.0.0.1:$UP) on a TLS 1.3 listener of `LISTEN`
#                      options; EXTRA: more lines of the server block
tls_state() {
  S="$BENCH_STATE/$1"
  mkdir -p "$S/tmp"
  rm -f "$S"/*.pid
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -keyout "$S/key.pem" -out "$S/cert.pem" 2>/dev/null
}

tls_nginx_conf() {
  cat >"$S/nginx.conf" <<NGX
# $1
worker_processes 2;
worker_rlimit_nofile 20000;
pid $S/nginx.pid;
error_log $S/nginx.error.log warn;
events { worker_connections 19000; }
http {
    access_log off;
    client_body_temp_path $S/tmp/body;
    proxy_temp_path $S/tmp/proxy;
    fastcgi_temp_path $S/tmp/fastcgi;
    uwsgi_temp_path $S/tmp/uwsgi;
    scgi_temp_path $S/tmp/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    http2_max_concurrent_streams 128;
    upstream runtime {
        server 127.0.0.1:$UP;
        keepalive $3;
        keepalive_requests 10000000;
        keepalive_timeout 300s;
    }
    server {
        listen 127.0.0.1:$2;
        ssl_certificate $S/cert.pem;
        ssl_certificate_key $S/key.pem;
        ssl_protocols TLSv1.3;
${4:-}
        location / {
            proxy_pass http://runtime;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
NGX
}
