# shellcheck shell=bash
# Shared helpers for scripts/*. This file is sourced, never executed.
#
# Everything machine-specific (virtualenv, Odoo tree, config, filestore, Redis data) lives in
# the project's cache folder, never in the repository, so a fresh clone (CI) and a developer
# checkout on the same machine share the slow-to-build parts (venv, Odoo tree) but each gets
# its own Odoo config (addons_path points at *that* checkout).

set -euo pipefail

# ---------------------------------------------------------------------------------------------
# Locations and defaults (every one can be overridden from the environment; see README.md)
# ---------------------------------------------------------------------------------------------
DRIP_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
DRIP_CACHE=${DRIP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/drip_marketing}
DRIP_VENV=${DRIP_VENV:-$DRIP_CACHE/venv}
DRIP_ODOO_SERIES=18.0
DRIP_ODOO_GIT_URL=${DRIP_ODOO_GIT_URL:-https://github.com/odoo/odoo}
DRIP_DB_USER=${DRIP_DB_USER:-drip}
DRIP_DB_PASSWORD=${DRIP_DB_PASSWORD:-drip}
DRIP_REDIS_PORT=${DRIP_REDIS_PORT:-6379}
DRIP_HTTP_PORT=${DRIP_HTTP_PORT:-8069}
DRIP_DB=${DRIP_DB:-drip_demo}

# One config per checkout: key = folder name + hash of its absolute path.
_drip_repo_key="$(basename "$DRIP_REPO")-$(printf '%s' "$DRIP_REPO" | sha256sum | cut -c1-8)"
DRIP_INSTANCE_DIR=$DRIP_CACHE/instances/$_drip_repo_key
DRIP_ENV_FILE=$DRIP_INSTANCE_DIR/env.sh
DRIP_ODOO_CONF=$DRIP_INSTANCE_DIR/odoo.conf

# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------
DRIP_SCRIPT=${DRIP_SCRIPT:-$(basename "$0")}

log() { printf '[%s] %s\n' "$DRIP_SCRIPT" "$*"; }
warn() { printf '[%s] WARNING: %s\n' "$DRIP_SCRIPT" "$*" >&2; }
die() {
    printf '[%s] ERROR: %s\n' "$DRIP_SCRIPT" "$*" >&2
    exit 1
}

# A banner that cannot be missed in a long CI log.
banner() {
    local line
    line=$(printf '%*s' 78 '' | tr ' ' '#')
    printf '\n%s\n' "$line"
    local msg
    for msg in "$@"; do printf '## %s\n' "$msg"; done
    printf '%s\n\n' "$line"
}

now() { date +%s; }

# Seconds -> "1m23s" / "45s"
fmt_secs() {
    local s=$1
    if ((s >= 60)); then printf '%dm%02ds' $((s / 60)) $((s % 60)); else printf '%ds' "$s"; fi
}

# ---------------------------------------------------------------------------------------------
# Privileges: we normally run as root (CI, containers); elsewhere fall back to sudo.
# ---------------------------------------------------------------------------------------------
as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi
}

# Run a command as the postgres OS user, from / so it does not complain about our cwd.
as_postgres() {
    if [ "$(id -u)" = 0 ]; then
        (cd / && runuser -u postgres -- "$@")
    else
        (cd / && sudo -n -u postgres "$@")
    fi
}

# ---------------------------------------------------------------------------------------------
# Debian packages
# ---------------------------------------------------------------------------------------------
pkg_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

# ---------------------------------------------------------------------------------------------
# Odoo tree detection
# ---------------------------------------------------------------------------------------------
# True when $1 is an Odoo 18.0 source tree (odoo-bin + release.py saying 18.0).
is_odoo_tree() {
    local d=$1
    [ -n "$d" ] && [ -f "$d/odoo-bin" ] && [ -f "$d/odoo/release.py" ] &&
        grep -qE '^version_info = \(18, 0,' "$d/odoo/release.py" &&
        [ -d "$d/odoo/addons/base" ]
}

# ---------------------------------------------------------------------------------------------
# Environment written by scripts/setup
# ---------------------------------------------------------------------------------------------
load_env() {
    [ -f "$DRIP_ENV_FILE" ] || die "no $DRIP_ENV_FILE: run scripts/setup first"
    # shellcheck disable=SC1090
    . "$DRIP_ENV_FILE"
}

# The venv's python runs Odoo: odoo-bin's shebang would pick whatever python3 is on PATH.
odoo_bin() {
    "$DRIP_VENV/bin/python" "$ODOO/odoo-bin" "$@"
}

# psql as our own role over TCP on loopback (the same way Odoo connects).
#   psql_in <database> <psql args...>        psql_drip <psql args...>  (database postgres)
psql_in() {
    local db=$1
    shift
    PGPASSWORD=$DRIP_DB_PASSWORD psql -X -q -At -h 127.0.0.1 -p "${PGPORT:-5432}" \
        -U "$DRIP_DB_USER" -d "$db" -v ON_ERROR_STOP=1 "$@"
}
psql_drip() { psql_in postgres "$@"; }

db_exists() {
    [ "$(psql_drip -c "SELECT 1 FROM pg_database WHERE datname = '$1'")" = 1 ]
}

# State of a module in a database ('' when the db or the module table does not exist).
module_state() {
    psql_in "$1" -c "SELECT state FROM ir_module_module WHERE name = '$2'" 2>/dev/null || true
}

# Drop a database and its filestore; never fails (used in traps).
db_drop() {
    local db=$1
    PGPASSWORD=$DRIP_DB_PASSWORD dropdb --if-exists --force -h 127.0.0.1 -p "${PGPORT:-5432}" \
        -U "$DRIP_DB_USER" "$db" >/dev/null 2>&1 || true
    rm -rf "$DRIP_CACHE/data/filestore/$db"
}

# A fresh log folder per run: $DRIP_INSTANCE_DIR/logs/<kind>/<time>-<pid>, plus a `latest`
# link. Per run, because two runs in one checkout (a developer and an agent, say) must not
# delete each other's logs; only the 5 newest folders of a kind are kept.
new_logdir() {
    local base=$DRIP_INSTANCE_DIR/logs/$1 dir
    dir=$base/$(date +%Y%m%d-%H%M%S)-$$
    mkdir -p "$dir"
    ln -sfn "$dir" "$base/latest"
    # shellcheck disable=SC2012
    ls -1d "$base"/20* 2>/dev/null | sort | head -n -5 | xargs -r rm -rf
    printf '%s\n' "$dir"
}

# Run odoo-bin with its log in a file; fail when it exits non-zero OR logs an ERROR/CRITICAL
# line (Odoo logs many data-loading problems without a non-zero exit status).
#   odoo_logged <label> <logfile> <odoo-bin args...>
odoo_logged() {
    local label=$1 logfile=$2
    shift 2
    local t0 rc=0
    t0=$(now)
    log "$label ..."
    odoo_bin "$@" --logfile="$logfile" --log-level=info </dev/null || rc=$?
    local bad
    bad=$(grep -cE '^[0-9-]+ [0-9:,]+ [0-9]+ (ERROR|CRITICAL) ' "$logfile" || true)
    if [ "$rc" != 0 ] || [ "$bad" != 0 ]; then
        warn "$label FAILED (exit $rc, $bad ERROR/CRITICAL log lines) after $(fmt_secs $(($(now) - t0))); log: $logfile"
        echo "----- ERROR/CRITICAL lines (first 40) -----" >&2
        grep -E -A8 '^[0-9-]+ [0-9:,]+ [0-9]+ (ERROR|CRITICAL) ' "$logfile" | head -200 >&2 || true
        echo "----- last 40 log lines -----" >&2
        tail -n 40 "$logfile" >&2
        return 1
    fi
    local nwarn
    nwarn=$(grep -cE '^[0-9-]+ [0-9:,]+ [0-9]+ WARNING ' "$logfile" || true)
    log "$label ok in $(fmt_secs $(($(now) - t0))) ($nwarn warnings in $logfile)"
}
