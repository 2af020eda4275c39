# Stand-ins for the images envoy/docker-compose.yaml names, built offline from local files
# (scripts/compose-images.sh): the base is a Debian root file system made by debootstrap
# (nginx-light and python3 included) and imported with `docker import`. Each stage plays one
# official image, with the same command line the compose file relies on.

ARG BASE

# envoyproxy/envoy: the compose file brings its own entrypoint (sh -c 'sed ... && exec envoy').
FROM ${BASE} AS envoy
COPY envoy /usr/local/bin/envoy

# mccutchen/go-httpbin: answers /status/NNN on $HOST:$PORT.
FROM ${BASE} AS backend
COPY backend.py /app/backend.py
CMD ["/bin/sh", "-c", "exec python3 /app/backend.py \"$PORT\""]

# nginx: the server blocks in conf.d (the compose file mounts default.conf there), logs to the
# container's output as the official image does.
FROM ${BASE} AS errors
RUN rm -f /etc/nginx/sites-enabled/default \
    && ln -sf /dev/stdout /var/log/nginx/access.log && ln -sf /dev/stderr /var/log/nginx/error.log
CMD ["nginx", "-g", "daemon off;"]
