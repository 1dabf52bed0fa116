# moongate's image: a multi-stage build on Debian 12 (docs/operations.md,
# "Containers"). The build stage has the -dev packages and runs the same
# `make install` as a host; the runtime stage has only the runtime
# libraries, the binary and the Lua tree, and runs as a non-root user.
#
#   docker build -t moongate .
#   docker run --rm -p 8080:8080 moongate
#
# spec/02-integration/65-install_spec.lua proves what each instruction does
# without a container runtime: it runs this file's `make install`, checks
# that the runtime stage's packages cover what the binary links, and starts
# the installed binary as PID 1 of a new PID namespace as an unprivileged
# user with this file's ENV, HEALTHCHECK and stop signal.

FROM debian:12 AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      gcc make pkg-config libluajit2-5.1-dev luajit2 libevent-dev libwslay-dev libssl-dev \
      lua-cjson node-llhttp zlib1g-dev libnghttp2-dev ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# an image runs on other machines than the one that built it: llhttp's
# portable byte loops, not the building host's SSE 4.2 (the Makefile's
# LLHTTP_SIMD); --build-arg LLHTTP_SIMD=-msse4.2 where every x86-64 host
# that will run the image has it
ARG LLHTTP_SIMD=
RUN make -j"$(nproc)" LLHTTP_SIMD="$LLHTTP_SIMD" moongate && make install PREFIX=/usr/local DESTDIR=/out

FROM debian:12-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libluajit2-5.1-2 libevent-2.1-7 libevent-core-2.1-7 libevent-openssl-2.1-7 libwslay1 \
      libssl3 zlib1g libnghttp2-14 \
      lua-cjson curl ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin moongate
COPY --from=build /out/ /
# the conf, scripts and public/ (make install's site): mount your own here
# and edit it; `docker kill -s HUP <container>` reloads it
WORKDIR /usr/local/etc/moongate
VOLUME ["/usr/local/etc/moongate"]
# configured by the environment: every listener inside the container, the
# admin listener (health, metrics) on loopback for HEALTHCHECK, demo off
ENV MOONGATE_LISTEN=0.0.0.0:8080 \
    MOONGATE_ADMIN_LISTEN=127.0.0.1:9901 \
    MOONGATE_DEMO=0
USER moongate
EXPOSE 8080
# SIGTERM drains (conf/default.lua: timeouts.drain = 8, inside docker
# stop's 10 s grace) and the master, PID 1 here, exits 0
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD curl -fsS -o /dev/null http://127.0.0.1:9901/healthz || exit 1
ENTRYPOINT ["/usr/local/bin/moongate"]
