#!/usr/bin/env bash
# Shared cache benchmark, against nginx with WebDAV's PUT on a loopback port, for three
# projects:
#
#   tiny       recipes/tiny as Format=tar
#   big        recipes/tiny with the ~30k files / ~600 MB base tree of benches/rebuild.sh, as
#              Format=tar: the final output is one 600 MB file (as a UKI is one file)
#   generated  recipes/tiny whose finalize writes ~30k files / 600 MB of incompressible data,
#              as Format=directory: the final output is a tree of 30k blobs nobody else has (a
#              base tree is an input, so every member has its blobs already)
#
# and for each, medians of:
#
#   local    a cold build with an empty store and no shared cache
#   remote   member B's build with an empty store, everything on the shared cache (member A
#            built and pushed it once before): the ratio to the local cold build
#   pull     `kiln cache pull` of every stage into an empty store: its time and throughput
#            (bytes nginx sent / the pull's own time, planning excluded)
#   bytes    what nginx sent for B's build (the final output only), for the pull of every stage
#            (what B lacks of the whole store: its inputs are local), and what the server holds
#
#   benches/remote.sh [RUNS]         (default 3 runs per scenario; needs root and nginx)
#
# BENCH_DIR (default /var/tmp/kiln-bench) holds the generated tree (shared with rebuild.sh),
# and remote/ with the projects, stores, keys and the server's files.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
bench_dir=${BENCH_DIR:-/var/tmp/kiln-bench}
cargo build --release --quiet
kiln=$PWD/target/release/kiln
work=$bench_dir/remote
rm -rf "$work"
mkdir -p "$work/nginx/www/kiln" "$work/nginx/body" "$work/nginx/tmp"

# nginx on a free loopback port, logging what it sends.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
n=$work/nginx
cat >"$n/nginx.conf" <<EOF
daemon off;
worker_processes 2;
user root root;
pid $n/nginx.pid;
error_log $n/error.log;
events { worker_connections 1024; }
http {
  log_format bench '\$request_method \$status \$body_bytes_sent';
  access_log $n/access.log bench;
  client_body_temp_path $n/body;
  proxy_temp_path $n/tmp;
  fastcgi_temp_path $n/tmp;
  uwsgi_temp_path $n/tmp;
  scgi_temp_path $n/tmp;
  sendfile on;
  keepalive_requests 100000;
  server {
    listen 127.0.0.1:$port;
    root $n/www;
    client_max_body_size 0;
    location /kiln/ {
      dav_methods PUT;
      create_full_put_path on;
      dav_access user:rw group:r all:r;
    }
  }
}
EOF
nginx -p "$n" -c "$n/nginx.conf" -e "$n/error.log" &
nginx_pid=$!
trap 'kill $nginx_pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
done

# A signing key, and the environment of a team member (and nothing of the user's config).
export XDG_CONFIG_HOME=$work/config
"$kiln" cache keygen bench-1 --dir "$work/keys" >/dev/null
unset KILN_CONFIG KILN_CACHE_PUSH KILN_CACHE_CREDENTIALS KILN_CACHE_TOKEN KILN_CACHE_USER KILN_CACHE_PASSWORD
export KILN_CACHE_REMOTE=http://127.0.0.1:$port/kiln
export KILN_CACHE_TRUSTED_KEYS
KILN_CACHE_TRUSTED_KEYS=$(cat "$work/keys/bench-1.public")
export KILN_CACHE_SIGNING_KEY=$work/keys/bench-1.secret

# The ~30k files / ~600 MB tree of benches/rebuild.sh (same generator, same bytes).
make_big() {
    local dir=$1
    [ -f "$dir/.complete" ] && return
    rm -rf "$dir"
    cp -a recipes/tiny "$dir"
    rm -rf "$dir/mkosi.output"
    python3 - "$dir/base/usr/share/bench" <<'PY'
import os, random, sys
root = sys.argv[1]
rng = random.Random(42)
total = 0
for d in range(300):
    sub = os.path.join(root, f"dir{d:03}")
    os.makedirs(sub, exist_ok=True)
    for f in range(100):
        size = rng.randint(1000, 39000)
        with open(os.path.join(sub, f"file{f:03}"), "wb") as out:
            out.write(rng.randbytes(size))
        total += size
print(f"generated 30000 files, {total / 1e6:.0f} MB", file=sys.stderr)
PY
    touch "$dir/.complete"
}

now() { date +%s.%N; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# Bytes nginx sent for GET requests since the log was emptied.
sent() { awk '$1 == "GET" { s += $3 } END { print s + 0 }' "$n/access.log"; }
fail() { cat "$work/last.log" >&2; exit 1; }

# run_kiln PROJECT STORE ARGS...: seconds of one kiln command; its stderr in last.log.
run_kiln() {
    local project=$1 store=$2 start end
    shift 2
    start=$(now)
    "$kiln" -C "$project" --cache-dir "$store" "$@" >"$work/last.out" 2>"$work/last.log" || fail
    end=$(now)
    awk -v a="$start" -v b="$end" 'BEGIN { printf "%.4f\n", b - a }'
}

bench_project() {
    local name=$1 project=$2 format=$3
    printf '[Output]\nFormat=%s\n' "$format" >"$project/mkosi.local.conf"
    rm -rf "$n/www/kiln"
    mkdir -p "$n/www/kiln"
    # Member A builds and pushes once.
    rm -rf "$work/store-a" "$project/mkosi.output"
    run_kiln "$project" "$work/store-a" build --cache-push >/dev/null
    local stages
    stages=$(grep -Ec '^[a-z-]+: ran' "$work/last.log")
    # Only the server's copy is needed from here on; the disk is shared.
    rm -rf "$work/store-a"
    local server objects
    server=$(du -sb "$n/www/kiln" | cut -f1)
    objects=$(find "$n/www/kiln/cas" -type f | wc -l)
    local local_times=() remote_times=() pull_times=() remote_bytes=() pull_bytes=()
    for _ in $(seq "$runs"); do
        rm -rf "$work/store-local" "$project/mkosi.output"
        sync
        local_times+=("$(run_kiln "$project" "$work/store-local" --no-cache-remote build)")
        rm -rf "$work/store-local"

        rm -rf "$work/store-b" "$project/mkosi.output"
        sync
        : >"$n/access.log"
        remote_times+=("$(run_kiln "$project" "$work/store-b" build)")
        grep -q "0 of $stages stages ran, $stages from the shared cache" "$work/last.log" || fail
        remote_bytes+=("$(sent)")
        rm -rf "$work/store-b"

        rm -rf "$work/store-pull"
        sync
        : >"$n/access.log"
        run_kiln "$project" "$work/store-pull" cache pull >/dev/null
        grep -q "^pulled $stages stages" "$work/last.out" || fail
        # "pulled 6 stages from URL (N objects, X MiB (Y MiB on the wire)) in 1.23 s, ..."
        pull_times+=("$(sed -E 's/.* in ([0-9.]+) (ms|s),.*/\1 \2/' "$work/last.out" |
            awk '{ print ($2 == "ms") ? $1 / 1000 : $1 }')")
        pull_bytes+=("$(sent)")
        rm -rf "$work/store-pull"
    done
    rm -rf "$project/mkosi.output"
    local l r p rb pb
    l=$(printf '%s\n' "${local_times[@]}" | median)
    r=$(printf '%s\n' "${remote_times[@]}" | median)
    p=$(printf '%s\n' "${pull_times[@]}" | median)
    rb=$(printf '%s\n' "${remote_bytes[@]}" | median)
    pb=$(printf '%s\n' "${pull_bytes[@]}" | median)
    local mb='BEGIN { printf "%.3f", b / 1e6 }'
    printf '%-9s %-28s median %8.3f s\n' "$name" "local cold build" "$l"
    printf '%-9s %-28s median %8.3f s   ratio to local %.3f\n' "$name" "build from the shared cache" "$r" \
        "$(awk -v a="$r" -v b="$l" 'BEGIN { printf "%.6f", a / b }')"
    printf '%-9s %-28s median %8.3f s   %.1f MB/s\n' "$name" "pull of every stage" "$p" \
        "$(awk -v b="$pb" -v t="$p" 'BEGIN { printf "%.3f", b / 1e6 / t }')"
    printf '%-9s %-28s %s MB for the final output, %s MB for every stage, %s MB on the server (%s objects)\n' \
        "$name" "bytes sent by nginx" "$(awk -v b="$rb" "$mb")" "$(awk -v b="$pb" "$mb")" \
        "$(awk -v b="$server" "$mb")" "$objects"
}

tiny=$work/tiny
cp -a recipes/tiny "$tiny"
rm -rf "$tiny/mkosi.output"
make_big "$bench_dir/big"
big=$work/big
cp -a "$bench_dir/big" "$big"
rm -rf "$big/mkosi.output" "$big/mkosi.local.conf"
generated=$work/generated
cp -a recipes/tiny "$generated"
rm -rf "$generated/mkosi.output"
cat >>"$generated/mkosi.finalize" <<'EOF'
mkdir -p "$BUILDROOT/usr/share/generated"
openssl enc -aes-256-ctr -pass pass:kiln -nosalt -pbkdf2 -in /dev/zero 2>/dev/null |
    head -c 629145600 | split -b 20480 -a 5 - "$BUILDROOT/usr/share/generated/f"
EOF

echo "kiln shared cache benchmark: medians of $runs runs, nginx (2 workers) on 127.0.0.1:$port"
bench_project tiny "$tiny" tar
bench_project big "$big" tar
rm -rf "$big"
bench_project generated "$generated" directory
