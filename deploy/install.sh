#!/usr/bin/env bash
# Install, upgrade or remove edge-agent on Raspberry Pi OS (Debian Bookworm/Trixie).
#
#   sudo deploy/install.sh                  install or upgrade from this checkout
#   sudo deploy/install.sh --from edge-agent==0.2.0     ... from PyPI
#   sudo deploy/install.sh --uninstall      remove the program, keep config and state
#   sudo deploy/install.sh --purge          remove config, state and the user as well
#
# Idempotent: running it again upgrades the program and restarts the service,
# keeping /etc/edge-agent and /var/lib/edge-agent as they are.
#
# With --root DIR (or EDGE_AGENT_ROOT=DIR) every path is taken inside DIR and
# nothing outside it is touched: apt, user creation, ownership and systemctl
# are printed as "would run: ..." instead of run. The venv is still created
# and the package installed, so DIR can be inspected (the tests do this); a
# venv is not relocatable, so build images in a chroot, not with --root.
set -euo pipefail

readonly SERVICE=edge-agent.service
readonly USER_NAME=edge-agent
readonly GPIO_GROUP=gpio
readonly APP_DIR=/opt/edge-agent
readonly VENV=/opt/edge-agent/venv
readonly CONF_DIR=/etc/edge-agent
readonly CONF=/etc/edge-agent/config.toml
readonly STATE_DIR=/var/lib/edge-agent
readonly DB_PATH=/var/lib/edge-agent/agent.db
readonly UNIT=/etc/systemd/system/edge-agent.service
readonly BIN_LINK=/usr/local/bin/edge-agent

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$SCRIPT_DIR")

ROOT=${EDGE_AGENT_ROOT:-}
SOURCE=""
# Debian's interpreter by default: a venv links to its interpreter, which the
# service user must be able to run (a pyenv under /root would not do).
PYTHON=python3
[[ -x /usr/bin/python3 ]] && PYTHON=/usr/bin/python3
DEVICE_ID=""
USE_APT=1
START=1
MODE=install
PURGE=0

usage() {
    cat <<EOF
usage: install.sh [options]

  --from SRC        what to install: a source directory, a wheel or sdist, or a
                    pip requirement such as "edge-agent" or "edge-agent==0.2.0"
                    (default: the checkout this script is in, else "edge-agent")
  --python PATH     interpreter for the venv, 3.11 or newer, runnable by the
                    service user (default: /usr/bin/python3)
  --device-id ID    [device] id for a newly written config (default: hostname)
  --no-apt          do not install Debian packages (python3-venv, python3-lgpio)
  --no-start        enable the service but do not (re)start it now
  --uninstall       remove the program, unit and venv; keep config, state, user
  --purge           --uninstall, and remove config, state and the user too
  --root DIR        operate inside DIR; print what would change the real
                    system instead of doing it (also: EDGE_AGENT_ROOT=DIR)
  -h, --help        this help
EOF
}

ARGS=("$@")
while (($#)); do
    case $1 in
        --from) SOURCE=${2:?--from needs a value}; shift ;;
        --from=*) SOURCE=${1#*=} ;;
        --python) PYTHON=${2:?--python needs a value}; shift ;;
        --python=*) PYTHON=${1#*=} ;;
        --device-id) DEVICE_ID=${2:?--device-id needs a value}; shift ;;
        --device-id=*) DEVICE_ID=${1#*=} ;;
        --root) ROOT=${2:?--root needs a value}; shift ;;
        --root=*) ROOT=${1#*=} ;;
        --no-apt) USE_APT=0 ;;
        --no-start) START=0 ;;
        --uninstall) MODE=uninstall ;;
        --purge) MODE=uninstall; PURGE=1 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; echo "install.sh: unknown option: $1" >&2; exit 2 ;;
    esac
    shift
done

say() { printf 'edge-agent: %s\n' "$*"; }
warn() { printf 'edge-agent: warning: %s\n' "$*" >&2; }
die() { printf 'edge-agent: error: %s\n' "$*" >&2; exit 1; }

# The path of a target-system path inside the root ("" = the real system).
at() { printf '%s%s' "$ROOT" "$1"; }

# Run a command that changes the real system, or only show it under --root.
system() {
    if [[ -n $ROOT ]]; then
        say "would run: $*"
    else
        say "running: $*"
        "$@"
    fi
}

systemd_running() { [[ -z $ROOT && -d /run/systemd/system ]]; }

setup_root() {
    if [[ -n $ROOT ]]; then
        ROOT=$(realpath -m -- "$ROOT")
        [[ $ROOT == / ]] && ROOT=""
    fi
    if [[ -n $ROOT ]]; then
        mkdir -p -- "$ROOT"
        say "operating inside $ROOT; the real system is left alone"
    elif ((EUID != 0)); then
        die "run as root (sudo $0 ${ARGS[*]}), or use --root DIR to try it in a directory"
    fi
}

check_os() {
    local ID="" ID_LIKE="" VERSION_CODENAME="" PRETTY_NAME=""
    # shellcheck disable=SC1091
    [[ -r /etc/os-release ]] && . /etc/os-release
    if [[ " $ID $ID_LIKE " != *" debian "* && $ID != raspbian ]]; then
        warn "${PRETTY_NAME:-this system} is not Debian-based; continuing (consider --no-apt)"
        return
    fi
    if [[ ! -e /etc/rpi-issue && $ID != raspbian ]]; then
        warn "${PRETTY_NAME:-this system} is not Raspberry Pi OS; continuing" \
            "(real GPIO needs a Raspberry Pi; pin_factory = \"mock\" works anywhere)"
    fi
    case $VERSION_CODENAME in
        bookworm|trixie) ;;
        *) warn "tested on Bookworm and Trixie, not on '${VERSION_CODENAME:-unknown}'" ;;
    esac
}

check_python() {
    command -v "$PYTHON" >/dev/null || die "no $PYTHON; install python3 (3.11 or newer)"
    local version
    version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    "$PYTHON" -c 'import sys; raise SystemExit(sys.version_info < (3, 11))' \
        || die "edge-agent needs Python 3.11 or newer; $PYTHON is $version"
    say "using $(command -v "$PYTHON") (Python $version)"
}

install_apt_packages() {
    ((USE_APT)) || { say "skipping Debian packages (--no-apt)"; return; }
    command -v apt-get >/dev/null || { warn "no apt-get: skipping Debian packages"; return; }
    local wanted=(python3-venv) missing=() pkg
    # python3-lgpio (gpiozero's default pin factory) is in Raspberry Pi OS, not plain Debian.
    if apt-cache show python3-lgpio >/dev/null 2>&1; then
        wanted+=(python3-lgpio)
    else
        warn "python3-lgpio is not available here: gpiozero will use another pin factory"
    fi
    for pkg in "${wanted[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || missing+=("$pkg")
    done
    if ((${#missing[@]} == 0)); then
        say "Debian packages present: ${wanted[*]}"
        return
    fi
    system apt-get update
    system env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
}

check_venv_module() {
    "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null \
        || die "$PYTHON cannot create venvs: install python3-venv (or drop --no-apt)"
}

create_user() {
    if [[ -n $ROOT ]]; then
        say "would run: groupadd --system $GPIO_GROUP (if missing)"
        say "would run: useradd --system --user-group --groups $GPIO_GROUP --home-dir $STATE_DIR" \
            "--no-create-home --shell /usr/sbin/nologin $USER_NAME (if missing)"
        return
    fi
    if ! getent group "$GPIO_GROUP" >/dev/null; then
        system groupadd --system "$GPIO_GROUP"
        warn "created group $GPIO_GROUP: on other boards, give it /dev/gpiochip* with a udev rule"
    fi
    if getent passwd "$USER_NAME" >/dev/null; then
        id -nG "$USER_NAME" | tr ' ' '\n' | grep -qx "$GPIO_GROUP" \
            || system usermod --append --groups "$GPIO_GROUP" "$USER_NAME"
    else
        system useradd --system --user-group --groups "$GPIO_GROUP" --home-dir "$STATE_DIR" \
            --no-create-home --no-log-init --shell /usr/sbin/nologin --comment "edge-agent daemon" "$USER_NAME"
    fi
}

# Directory with mode; owner only on the real system (the user may not exist under --root).
make_dir() {
    local path=$1 mode=$2 owner=$3
    install -d -m "$mode" -- "$(at "$path")"
    if [[ -n $ROOT ]]; then
        say "would run: chown $owner $path"
    else
        chown -- "$owner" "$path"
    fi
}

create_dirs() {
    install -d -m 0755 -- "$(at "$APP_DIR")"
    make_dir "$CONF_DIR" 0750 "root:$USER_NAME"
    make_dir "$STATE_DIR" 0750 "$USER_NAME:$USER_NAME"
}

create_venv() {
    local venv_python want have
    venv_python=$(at "$VENV")/bin/python
    want=$("$PYTHON" -c 'import sys; print(sys.version_info[:2])')
    if [[ -x $venv_python ]]; then
        # a Debian upgrade (Bookworm -> Trixie) changes Python: the old venv is then unusable
        have=$("$venv_python" -c 'import sys; print(sys.version_info[:2])' 2>/dev/null || true)
        if [[ $have == "$want" ]]; then
            say "reusing venv $VENV"
            return
        fi
        say "recreating venv $VENV (Python changed: ${have:-broken} -> $want)"
        rm -rf -- "$(at "$VENV")"
    fi
    say "creating venv $VENV (with system site-packages, for Debian's python3-lgpio)"
    "$PYTHON" -m venv --system-site-packages -- "$(at "$VENV")"
}

# What to hand pip: a clean copy of a source tree (so building as root leaves
# no root-owned build/ or egg-info in the user's checkout), a file, or a
# requirement string for PyPI.
resolve_source() {
    local src=$SOURCE
    if [[ -z $src ]]; then
        if [[ -f $REPO_DIR/pyproject.toml ]]; then src=$REPO_DIR; else src=edge-agent; fi
    fi
    if [[ -d $src ]]; then
        [[ -f $src/pyproject.toml ]] || die "$src has no pyproject.toml"
        WORK_DIR=$(mktemp -d)
        "$PYTHON" - "$src" "$WORK_DIR/src" <<'EOF'
import shutil
import sys

junk = shutil.ignore_patterns(".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__",
                              ".pytest_cache", ".mypy_cache", ".ruff_cache", "*.db", "*.db-*")
shutil.copytree(sys.argv[1], sys.argv[2], ignore=junk, symlinks=True)
EOF
        PIP_TARGET_SPEC=$WORK_DIR/src
        say "installing from source directory $(realpath -- "$src")"
    elif [[ -f $src ]]; then
        PIP_TARGET_SPEC=$(realpath -- "$src")
        say "installing from $PIP_TARGET_SPEC"
    else
        PIP_TARGET_SPEC=$src
        say "installing $src from the package index"
    fi
}

install_package() {
    local venv_python pip
    venv_python=$(at "$VENV")/bin/python
    pip=("$venv_python" -m pip install --disable-pip-version-check --no-input --quiet --upgrade)
    resolve_source
    "${pip[@]}" "$PIP_TARGET_SPEC"
    # pip rebuilds and replaces a source directory every time, but keeps an
    # installed version when handed a wheel or sdist with the same number.
    if [[ -f $PIP_TARGET_SPEC ]]; then
        "${pip[@]}" --force-reinstall --no-deps "$PIP_TARGET_SPEC"
    fi
    say "installed $("$venv_python" -m pip show edge-agent 2>/dev/null | sed -n 's/^Version: /edge-agent /p')"
}

# A valid device id from the hostname: [a-z0-9][a-z0-9_-]*
default_device_id() {
    local name
    name=$(hostname 2>/dev/null || cat /etc/hostname 2>/dev/null || true)
    name=$(printf '%s' "${name%%.*}" | tr '[:upper:]' '[:lower:]' | tr -c 'a-z0-9_-' '-' | sed 's/^[^a-z0-9]*//')
    printf '%s' "${name:-edge-agent}"
}

# Copy the example config, setting [device] id and [storage] path (TOML tables
# are tracked so only those keys change); a minimal config when there is no example.
write_config() {
    local conf template tasks id
    conf=$(at "$CONF")
    if [[ -e $conf ]]; then
        say "keeping existing config $CONF"
        return
    fi
    id=${DEVICE_ID:-$(default_device_id)}
    [[ $id =~ ^[a-z0-9][a-z0-9_-]*$ ]] || die "invalid device id '$id' (use [a-z0-9][a-z0-9_-]*; see --device-id)"
    template=$REPO_DIR/config/example.toml
    if [[ -f $template ]]; then
        awk -v id="$id" -v db="$DB_PATH" '
            /^[[:space:]]*\[/ { table = $0; gsub(/[[:space:]]|#.*/, "", table) }
            table == "[device]" && /^[[:space:]]*id[[:space:]]*=/ { print "id = \"" id "\""; next }
            table == "[storage]" && /^[[:space:]]*path[[:space:]]*=/ { print "path = \"" db "\""; next }
            { print }
        ' "$template" >"$conf.new"
        tasks=$REPO_DIR/config/example_tasks.py
        if [[ -f $tasks && ! -e $(at "$CONF_DIR")/example_tasks.py ]]; then
            # [tasks] in the example imports it from the config's directory
            install -m 0640 -- "$tasks" "$(at "$CONF_DIR")/example_tasks.py"
            [[ -n $ROOT ]] || chown -- "root:$USER_NAME" "$CONF_DIR/example_tasks.py"
        fi
    else
        cat >"$conf.new" <<EOF
# edge-agent configuration. Reference: the README's configuration section.
[device]
id = "$id"

[storage]
path = "$DB_PATH"

[clock]
trust = "sync"
EOF
    fi
    chmod 0640 -- "$conf.new"
    if [[ -n $ROOT ]]; then
        say "would run: chown root:$USER_NAME $CONF"
    else
        chown -- "root:$USER_NAME" "$conf.new"
    fi
    mv -- "$conf.new" "$conf"
    say "wrote $CONF (device id \"$id\"): edit it for your pins, location and broker"
    if grep -q '^pin_factory *= *"mock"' "$conf"; then
        say "it drives mock pins until you remove pin_factory = \"mock\" from its [gpio] table"
    fi
}

validate_config() {
    local check=("$(at "$VENV")/bin/edge-agent" check --config "$(at "$CONF")")
    # As the service user on the real system: what the daemon can read is what counts.
    if [[ -z $ROOT ]] && command -v runuser >/dev/null; then
        runuser -u "$USER_NAME" -- "$VENV/bin/python" -c '' 2>/dev/null \
            || die "user $USER_NAME cannot run $VENV/bin/python: $PYTHON must be readable by" \
                "all (not under /root, e.g. a pyenv); use --python /usr/bin/python3"
        check=(runuser -u "$USER_NAME" -- "${check[@]}")
    fi
    if ! (cd / && "${check[@]}"); then
        die "$CONF is not valid for this version (see above); the running service was not" \
            "restarted. Fix it, then: systemctl restart $SERVICE"
    fi
}

install_unit() {
    local unit=$SCRIPT_DIR/$SERVICE
    [[ -f $unit ]] || die "$unit not found next to this script"
    install -d -m 0755 -- "$(dirname "$(at "$UNIT")")"
    install -m 0644 -- "$unit" "$(at "$UNIT")"
    say "installed $UNIT"
    install -d -m 0755 -- "$(dirname "$(at "$BIN_LINK")")"
    local link
    link=$(at "$BIN_LINK")
    if [[ -L $link || ! -e $link ]]; then
        ln -sfn -- "$VENV/bin/edge-agent" "$link"
    else
        warn "$BIN_LINK exists and is not a symlink: left alone"
    fi
}

# systemctl verbs that need a running systemd (not: enable/disable, which only
# write symlinks and also work in a chroot while building an image).
systemctl_live() {
    if [[ -n $ROOT ]] || systemd_running; then
        system systemctl "$@"
    else
        say "systemd is not running here: skipped systemctl $*"
    fi
}

start_service() {
    systemctl_live daemon-reload
    system systemctl enable "$SERVICE"
    if ((!START)); then
        say "not starting now (--no-start); later: systemctl restart $SERVICE"
        return
    fi
    if [[ -z $ROOT ]] && ! systemd_running; then
        warn "systemd is not running here (a chroot or container?): the service starts at boot"
        return
    fi
    # Type=notify: restart returns once the daemon reports READY=1, or fails.
    if ! systemctl_live restart "$SERVICE"; then
        systemctl status --no-pager --lines=30 "$SERVICE" >&2 || true
        die "$SERVICE did not start; see: journalctl -u $SERVICE"
    fi
    [[ -n $ROOT ]] || say "$SERVICE is running; logs: journalctl -u $SERVICE -f; status: edge-agent status"
}

uninstall() {
    if [[ -e $(at "$UNIT") ]]; then
        systemctl_live stop "$SERVICE"
        system systemctl disable "$SERVICE"
    fi
    rm -f -- "$(at "$UNIT")"
    systemctl_live daemon-reload
    local link
    link=$(at "$BIN_LINK")
    if [[ -L $link && $(readlink -- "$link") == "$VENV/bin/edge-agent" ]]; then
        rm -f -- "$link"
    fi
    rm -rf -- "$(at "$VENV")"
    rmdir -- "$(at "$APP_DIR")" 2>/dev/null || true
    say "removed the program, $UNIT and $BIN_LINK"
    if ((PURGE)); then
        rm -rf -- "$(at "$CONF_DIR")" "$(at "$STATE_DIR")"
        if [[ -n $ROOT ]] || getent passwd "$USER_NAME" >/dev/null; then
            system userdel "$USER_NAME"
        fi
        say "purged $CONF_DIR, $STATE_DIR and user $USER_NAME"
    else
        say "kept $CONF_DIR, $STATE_DIR and user $USER_NAME (--purge removes them)"
    fi
}

WORK_DIR=""
cleanup() { [[ -n $WORK_DIR ]] && rm -rf -- "$WORK_DIR"; return 0; }
trap cleanup EXIT

main() {
    setup_root
    if [[ $MODE == uninstall ]]; then
        uninstall
        return
    fi
    check_os
    check_python
    if [[ -n $ROOT ]]; then
        ((USE_APT)) && say "would run: apt-get install python3-venv python3-lgpio (those missing)"
    else
        install_apt_packages
    fi
    check_venv_module
    create_user
    create_dirs
    create_venv
    install_package
    write_config
    validate_config
    install_unit
    start_service
}

main
