#!/usr/bin/env bash
# A real OpenStack on 127.0.0.1 for flatstack's tests and for trying flatstack without a cloud:
# Keystone, Glance, Placement, Nova (fake virt driver), Neutron (agentless ML2), Cinder
# (fake volume driver), Octavia (its own no-op amphora, compute and network drivers: load
# balancers go through Octavia's real API and state machine to ACTIVE and DELETED, with no
# amphora) and Swift (one replica on a local directory, behind Keystone, with its S3 API and
# temporary URLs), installed from PyPI into one virtualenv, with MariaDB, RabbitMQ and memcached from
# Debian. No data plane: servers go ACTIVE but never boot.
#
#   scripts/local-openstack.sh up       install (first time), configure, start, wait; idempotent
#   scripts/local-openstack.sh down     stop exactly the processes `up` started (by pid)
#   scripts/local-openstack.sh status   which services run, and where the logs are
#   scripts/local-openstack.sh env      print the variables that point clients at it
#   scripts/local-openstack.sh api-instance compute|network PORT
#                                       run one more Nova or Neutron API process on PORT, in the
#                                       foreground, sharing the running cloud's database and
#                                       queue: tests kill and restart it without disturbing the
#                                       cloud other tests use
#
# Everything lives under $FLATSTACK_OPENSTACK_DIR (default /var/tmp/flatstack-openstack):
# clouds.yaml (entries local-admin and local-demo, password "secret"), venv/, etc/, data/,
# logs/, pids/. For a clean cloud: `down`, remove data/ and etc/, `up` (the venv is kept).
set -euo pipefail

ROOT=${FLATSTACK_OPENSTACK_DIR:-/var/tmp/flatstack-openstack}
VENV=$ROOT/venv LOGS=$ROOT/logs PIDS=$ROOT/pids DATA=$ROOT/data ETC=$ROOT/etc
WSGI=$ROOT/wsgi RUN=$ROOT/run
HOST=127.0.0.1
PASSWORD=secret
KEYSTONE=http://$HOST:5000
DB="mysql+pymysql://os:$PASSWORD@$HOST:3307"
TRANSPORT="rabbit://guest:guest@$HOST:5673/"
MYSQL=(mariadb --no-defaults -uroot --socket="$RUN/mysqld.sock")
# Pinned releases that were verified together (Python 3.11).
PIP_PACKAGES=(keystone==30.0.0 glance==33.0.0 openstack-placement==16.0.0 nova==34.0.0
  neutron==29.0.0 cinder==29.0.0 python-openstackclient==10.5.0 openstacksdk==4.22.0
  osc-placement==4.9.1 octavia==19.0.0 python-octaviaclient==3.15.0 swift==2.38.3
  python-swiftclient==4.11.0 gunicorn PyMySQL pymemcache python-memcached)
APT_PACKAGES=(mariadb-server rabbitmq-server memcached curl openssl)
# Stop order: API and service tier first (in parallel), infrastructure last.
# Nova's fake driver on several compute hosts, one process each: control planes go into a
# server group with hard anti-affinity, so N of them need N hosts, and one more lets a lost
# one be built again while the scheduler still counts the host of the one just deleted.
COMPUTE_HOSTS=${FLATSTACK_COMPUTE_HOSTS:-4}
[[ $COMPUTE_HOSTS =~ ^[1-9]$ ]] || { echo "local-openstack: FLATSTACK_COMPUTE_HOSTS must be 1-9" >&2; exit 2; }
COMPUTES=()
for ((i = 1; i <= COMPUTE_HOSTS; i++)); do COMPUTES+=("nova-compute$i"); done
SERVICES=(swift-proxy swift-object swift-container swift-account octavia-worker octavia-api cinder-volume cinder-scheduler cinder-api neutron-api
  "${COMPUTES[@]}" nova-scheduler nova-conductor nova-api placement glance keystone)
# Processes earlier set-ups started under other names: `down` stops them too.
LEGACY=(nova-compute)
INFRA=(memcached rabbitmq epmd mariadb)

START=$(date +%s)
SINCE=$(date -u +%Y-%m-%dT%H:%M:%S)
say() { echo "[local-openstack +$(($(date +%s) - START))s] $*"; }
die() { echo "local-openstack: $*" >&2; exit 1; }

# ------------------------------------------------------------------ processes
# running NAME: its pid is alive and is still ours (a pid left from an earlier boot may have
# been reused by an unrelated process); gunicorn retitles its master `gunicorn: master [NAME]`
running() {
  local pid
  [[ -f $PIDS/$1.pid ]] || return 1
  pid=$(cat "$PIDS/$1.pid")
  kill -0 "$pid" 2>/dev/null &&
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null |
    grep -qE "$ROOT|master \[$1\]|rabbitmq-server|-port 4370|-p 11212"
}

# launch NAME COMMAND...: in its own session, so its pid is its process group
launch() {
  local name=$1; shift
  if running "$name"; then return 0; fi
  setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$PIDS/$name.pid"
  say "started $name (pid $!)"
}

# await NAME SECONDS COMMAND...: poll until COMMAND succeeds; on timeout name the log
await() {
  local name=$1 seconds=$2; shift 2
  local deadline=$(($(date +%s) + seconds))
  until "$@" >/dev/null 2>&1; do
    if (($(date +%s) >= deadline)); then
      local log=$LOGS/${name%%:*}.log
      echo "local-openstack: $name did not come up within ${seconds}s; its log: $log" >&2
      [[ -f $log ]] && tail -n 15 "$log" | sed 's/^/    /' >&2
      exit 1
    fi
    if [[ $name != *:* ]] && [[ -f $PIDS/$name.pid ]] && ! running "$name"; then
      echo "local-openstack: $name exited; its log: $LOGS/$name.log" >&2
      tail -n 15 "$LOGS/$name.log" | sed 's/^/    /' >&2
      exit 1
    fi
    sleep 1
  done
}
http_ok() {
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$1") || return 1
  ((code >= 200 && code < 500))
}
port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

stop_one() {
  local name=$1 file=$PIDS/$1.pid pid
  [[ -f $file ]] || return 0
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null && [[ $(ps -o pgid= -p "$pid" | tr -d ' ') == "$pid" ]]; then
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in $(seq 60); do pgrep -g "$pid" >/dev/null || break; sleep 0.5; done
    if pgrep -g "$pid" >/dev/null; then kill -KILL -- "-$pid" 2>/dev/null || true; fi
    echo "stopped $name (pid $pid)"
  fi
  rm -f "$file"
}

# gunicorn NAME PORT MODULE [WORKERS]: serve a WSGI wrapper module from $WSGI
gunicorn() {
  launch "$1" "$VENV/bin/gunicorn" --pythonpath "$WSGI" -b "$HOST:$2" -w "${4:-1}" -k gthread \
    --threads 8 --timeout 300 --graceful-timeout 10 --name "$1" "$3:application"
}

# wsgi_module NAME PROGRAM "CONFIG ARGS" "IMPORT" "SETUP": the WSGI apps parse sys.argv,
# which under gunicorn is gunicorn's own, so each gets a module that sets it first.
wsgi_module() {
  cat >"$WSGI/$1.py" <<EOF
import os, sys
$5
sys.argv = ['$2'] + '$3'.split()
$4
EOF
}

write() { mkdir -p "$(dirname "$1")"; cat >"$1"; }
admin() { "$VENV/bin/openstack" --os-cloud local-admin "$@"; }

service_auth() { # service_auth USER: body of a keystoneauth section
  cat <<EOF
auth_type = password
auth_url = $KEYSTONE
project_domain_name = Default
user_domain_name = Default
project_name = service
username = $1
password = $PASSWORD
region_name = RegionOne
EOF
}
authtoken() { # authtoken USER: body of [keystone_authtoken]
  cat <<EOF
www_authenticate_uri = $KEYSTONE
memcached_servers = $HOST:11212
service_token_roles_required = true
$(service_auth "$1")
EOF
}

# A heartbeat newer than this run: stale "up" rows would let RPCs go to missing queues.
# fresh_heartbeat KIND BINARY [HOST]
fresh_heartbeat() {
  "$VENV/bin/python" - "$1" "$2" "$SINCE" "${3:-}" <<'PY'
import sys, openstack
kind, binary, since, host = sys.argv[1:5]
cloud = openstack.connect(cloud='local-admin')
services = cloud.compute.services() if kind == 'compute' else cloud.block_storage.services()
sys.exit(0 if any(s.binary == binary and s.state == 'up' and (s.updated_at or '') >= since
                  and host in ('', s.host) for s in services) else 1)
PY
}

# ------------------------------------------------------------------ install
install() {
  local missing=() package
  for package in "${APT_PACKAGES[@]}"; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
  done
  if ((${#missing[@]})); then
    say "apt-get install ${missing[*]} (log: $LOGS/apt.log)"
    apt-get update -q >"$LOGS/apt.log" 2>&1 || die "apt-get update failed; see $LOGS/apt.log"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
      >>"$LOGS/apt.log" 2>&1 || die "apt-get install failed; see $LOGS/apt.log"
  fi
  # The marker records what was installed, so a changed package list installs again.
  if [[ $(cat "$VENV/.installed" 2>/dev/null) != "${PIP_PACKAGES[*]}" ]]; then
    say "pip install OpenStack into $VENV (log: $LOGS/pip.log)"
    [[ -x $VENV/bin/python ]] || python3 -m venv "$VENV"
    {
      "$VENV/bin/pip" install -q -U pip setuptools wheel &&
        "$VENV/bin/pip" install -q "${PIP_PACKAGES[@]}"
    } >"$LOGS/pip.log" 2>&1 || die "pip install failed; see $LOGS/pip.log"
    echo "${PIP_PACKAGES[*]}" >"$VENV/.installed"
  fi
  if [[ ! -f $VENV/.agentless ]]; then
    write_agentless_driver
    "$VENV/bin/pip" install -q "$ROOT/agentless" >>"$LOGS/pip.log" 2>&1 ||
      die "installing the agentless ML2 driver failed; see $LOGS/pip.log"
    touch "$VENV/.agentless"
  fi
}

# Neutron binds a port only through a mechanism driver, and the stock ones want a live L2
# agent. With no data plane, this one binds every port on its first segment, ACTIVE at once.
write_agentless_driver() {
  write "$ROOT/agentless/pyproject.toml" <<'EOF'
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "flatstack-agentless-ml2"
version = "1.0.0"
description = "ML2 mechanism driver for flatstack's loopback OpenStack: binds every port without an agent"

[project.entry-points."neutron.ml2.mechanism_drivers"]
agentless = "flatstack_agentless:AgentlessDriver"

[tool.setuptools]
py-modules = ["flatstack_agentless"]
EOF
  write "$ROOT/agentless/flatstack_agentless.py" <<'EOF'
"""Binds every port on its first segment as an OVS port, ACTIVE, with no agent involved."""
from neutron_lib import constants
from neutron_lib.api.definitions import portbindings
from neutron_lib.plugins.ml2 import api


class AgentlessDriver(api.MechanismDriver):
    def initialize(self):
        pass

    @property
    def connectivity(self):
        return portbindings.CONNECTIVITY_L2

    def bind_port(self, context):
        details = {portbindings.CAP_PORT_FILTER: True, portbindings.OVS_HYBRID_PLUG: False}
        for segment in context.segments_to_bind[:1]:
            context.set_binding(segment[api.ID], portbindings.VIF_TYPE_OVS, details,
                                status=constants.PORT_STATUS_ACTIVE)
EOF
}

# ------------------------------------------------------------------ infrastructure
infrastructure() {
  if [[ ! -d $DATA/mysql/mysql ]]; then
    mkdir -p "$DATA/mysql"
    mariadb-install-db --no-defaults --datadir="$DATA/mysql" --user=root \
      --auth-root-authentication-method=socket >"$LOGS/mariadb-install.log" 2>&1 ||
      die "mariadb-install-db failed; see $LOGS/mariadb-install.log"
  fi
  launch mariadb /usr/sbin/mariadbd --no-defaults --datadir="$DATA/mysql" --user=root \
    --socket="$RUN/mysqld.sock" --port=3307 --bind-address=$HOST --pid-file="$RUN/mariadbd.pid" \
    --skip-name-resolve --max-connections=2000 --innodb-buffer-pool-size=128M \
    --innodb-flush-log-at-trx-commit=2 --innodb-doublewrite=0 --skip-log-bin \
    --character-set-server=utf8mb3 --collation-server=utf8mb3_general_ci
  # RabbitMQ as root without Debian's su wrappers, its own epmd, everything on loopback.
  mkdir -p "$DATA/rabbitmq" "$LOGS/rabbitmq"
  echo '[].' >"$DATA/rabbitmq/enabled_plugins"
  printf 'listeners.tcp.default = 127.0.0.1:5673\nloopback_users = none\n' >"$DATA/rabbitmq/rabbitmq.conf"
  local rabbit_env=(env HOME="$DATA/rabbitmq" RABBITMQ_MNESIA_BASE="$DATA/rabbitmq/mnesia"
    RABBITMQ_LOG_BASE="$LOGS/rabbitmq" RABBITMQ_NODENAME=flatstack@localhost
    RABBITMQ_NODE_IP_ADDRESS=$HOST RABBITMQ_NODE_PORT=5673 RABBITMQ_DIST_PORT=25673
    ERL_EPMD_ADDRESS=$HOST ERL_EPMD_PORT=4370
    RABBITMQ_ENABLED_PLUGINS_FILE="$DATA/rabbitmq/enabled_plugins"
    RABBITMQ_CONFIG_FILE="$DATA/rabbitmq/rabbitmq.conf"
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}")
  launch epmd "${rabbit_env[@]}" /usr/bin/epmd -address $HOST -port 4370
  launch rabbitmq "${rabbit_env[@]}" /usr/lib/rabbitmq/bin/rabbitmq-server
  launch memcached /usr/bin/memcached -l $HOST -p 11212 -U 0 -u memcache -m 64 -c 4096
  await mariadb 60 "${MYSQL[@]}" -e 'select 1'
  local sql="" database
  for database in keystone glance placement nova_api nova nova_cell0 neutron cinder octavia; do
    sql+="CREATE DATABASE IF NOT EXISTS $database CHARACTER SET utf8mb3;"
  done
  "${MYSQL[@]}" -e "$sql CREATE USER IF NOT EXISTS 'os'@'127.0.0.1' IDENTIFIED BY '$PASSWORD';
    GRANT ALL PRIVILEGES ON *.* TO 'os'@'127.0.0.1'; FLUSH PRIVILEGES;"
  await memcached 30 port_open 11212
  await rabbitmq 120 port_open 5673
}

# ------------------------------------------------------------------ keystone
keystone() {
  write "$ETC/keystone/keystone.conf" <<EOF
[database]
connection = $DB/keystone?charset=utf8
[identity]
max_password_length = 72
[token]
provider = fernet
expiration = 14400
[fernet_tokens]
key_repository = $DATA/keystone/fernet-keys
[credential]
key_repository = $DATA/keystone/credential-keys
[cache]
enabled = true
backend = dogpile.cache.pymemcache
memcache_servers = $HOST:11212
EOF
  wsgi_module keystone_app keystone-wsgi-public "" "from keystone.wsgi.api import application" \
    "os.environ['OS_KEYSTONE_CONFIG_DIR'] = '$ETC/keystone'"
  local manage=("$VENV/bin/keystone-manage" --config-file "$ETC/keystone/keystone.conf")
  if [[ ! -f $DATA/keystone/.bootstrapped ]]; then
    say "keystone: database and bootstrap"
    mkdir -p "$DATA/keystone/fernet-keys" "$DATA/keystone/credential-keys"
    chmod 700 "$DATA/keystone/fernet-keys" "$DATA/keystone/credential-keys"
    {
      "${manage[@]}" db_sync &&
        "${manage[@]}" fernet_setup --keystone-user root --keystone-group root &&
        "${manage[@]}" credential_setup --keystone-user root --keystone-group root &&
        "${manage[@]}" bootstrap --bootstrap-password "$PASSWORD" --bootstrap-username admin \
          --bootstrap-project-name admin --bootstrap-role-name admin \
          --bootstrap-service-name keystone --bootstrap-region-id RegionOne \
          --bootstrap-admin-url "$KEYSTONE/v3/" --bootstrap-internal-url "$KEYSTONE/v3/" \
          --bootstrap-public-url "$KEYSTONE/v3/"
    } >>"$LOGS/keystone-manage.log" 2>&1 || die "keystone bootstrap failed; see $LOGS/keystone-manage.log"
    touch "$DATA/keystone/.bootstrapped"
  fi
  gunicorn keystone 5000 keystone_app 2
}

write_clouds_yaml() {
  local entries="" name user project
  for name in admin demo; do
    user=$name project=$name
    entries+="  local-$name:
    auth:
      auth_url: $KEYSTONE/v3
      username: $user
      password: $PASSWORD
      project_name: $project
      user_domain_name: Default
      project_domain_name: Default
    region_name: RegionOne
    interface: public
    identity_api_version: 3
"
  done
  printf 'clouds:\n%s' "$entries" >"$ROOT/clouds.yaml"
}

# Projects, users, roles, service catalog: once, through openstacksdk.
keystone_objects() {
  [[ -f $DATA/keystone/.objects ]] && return 0
  say "keystone: projects, users and the service catalog"
  "$VENV/bin/python" - "$PASSWORD" "$HOST" >>"$LOGS/keystone-objects.log" 2>&1 <<'PY' ||
import sys, openstack
password, host = sys.argv[1:3]
identity = openstack.connect(cloud='local-admin').identity
domain = identity.find_domain('default')
def ensure(find, create, **attrs):
    return find(attrs['name'], ignore_missing=True) or create(**attrs)
service_project = ensure(identity.find_project, identity.create_project, name='service', domain_id=domain.id)
demo_project = ensure(identity.find_project, identity.create_project, name='demo', domain_id=domain.id)
admin_role = identity.find_role('admin')
member_role = identity.find_role('member')
service_role = ensure(identity.find_role, identity.create_role, name='service')
demo = ensure(identity.find_user, identity.create_user, name='demo', password=password,
              domain_id=domain.id, default_project_id=demo_project.id)
identity.assign_project_role_to_user(demo_project, demo, member_role)
for name in ['glance', 'placement', 'nova', 'neutron', 'cinder']:
    user = ensure(identity.find_user, identity.create_user, name=name, password=password, domain_id=domain.id)
    identity.assign_project_role_to_user(service_project, user, admin_role)
    identity.assign_project_role_to_user(service_project, user, service_role)
catalog = [('glance', 'image', f'http://{host}:9292'),
           ('placement', 'placement', f'http://{host}:8778'),
           ('nova', 'compute', f'http://{host}:8774/v2.1'),
           ('neutron', 'network', f'http://{host}:9696'),
           ('cinderv3', 'block-storage', f'http://{host}:8776/v3/%(project_id)s')]
services = {s.type: s for s in identity.services()}
endpoints = {(e.service_id, e.interface) for e in identity.endpoints()}
for name, kind, url in catalog:
    service = services.get(kind) or identity.create_service(name=name, type=kind)
    for interface in ('public', 'internal', 'admin'):
        if (service.id, interface) not in endpoints:
            identity.create_endpoint(service_id=service.id, interface=interface, url=url, region_id='RegionOne')
PY
    die "creating keystone objects failed; see $LOGS/keystone-objects.log"
  touch "$DATA/keystone/.objects"
}

# Swift's service user and its place in the catalog (the ResellerAdmin role keystoneauth
# knows): once.
swift_objects() {
  [[ -f $DATA/keystone/.swift-objects ]] && return 0
  say "keystone: Swift's user and endpoint"
  "$VENV/bin/python" - "$PASSWORD" "$HOST" >>"$LOGS/keystone-objects.log" 2>&1 <<'PY' ||
import sys, openstack
password, host = sys.argv[1:3]
identity = openstack.connect(cloud='local-admin').identity
domain = identity.find_domain('default')
project = identity.find_project('service')
user = identity.find_user('swift', ignore_missing=True) or identity.create_user(
    name='swift', password=password, domain_id=domain.id)
for role in ('admin', 'service'):
    identity.assign_project_role_to_user(project, user, identity.find_role(role))
if not identity.find_role('ResellerAdmin', ignore_missing=True):
    identity.create_role(name='ResellerAdmin')
service = next((s for s in identity.services() if s.type == 'object-store'), None) or \
    identity.create_service(name='swift', type='object-store')
have = {e.interface for e in identity.endpoints() if e.service_id == service.id}
for interface in {'public', 'internal', 'admin'} - have:
    identity.create_endpoint(service_id=service.id, interface=interface, region_id='RegionOne',
                             url=f'http://{host}:8080/v1/AUTH_%(project_id)s')
PY
    die "creating Swift's keystone objects failed; see $LOGS/keystone-objects.log"
  touch "$DATA/keystone/.swift-objects"
}

# ------------------------------------------------------------------ glance, placement
glance() {
  mkdir -p "$DATA/glance/images" "$DATA/glance/staging" "$DATA/glance/tasks" "$DATA/locks" "$ETC/glance"
  cp "$VENV/etc/glance/glance-api-paste.ini" "$ETC/glance/glance-api-paste.ini"
  write "$ETC/glance/glance-api.conf" <<EOF
[DEFAULT]
enabled_backends = fs:file
[database]
connection = $DB/glance?charset=utf8
[glance_store]
default_backend = fs
[fs]
filesystem_store_datadir = $DATA/glance/images
[os_glance_staging_store]
filesystem_store_datadir = $DATA/glance/staging
[os_glance_tasks_store]
filesystem_store_datadir = $DATA/glance/tasks
[paste_deploy]
flavor = keystone
[oslo_concurrency]
lock_path = $DATA/locks
[keystone_authtoken]
$(authtoken glance)
EOF
  wsgi_module glance_app glance-api "" "from glance.wsgi.api import application" \
    "os.environ['OS_GLANCE_CONFIG_DIR'] = '$ETC/glance'"
  once glance-db "$VENV/bin/glance-manage" --config-file "$ETC/glance/glance-api.conf" db_sync
  gunicorn glance 9292 glance_app
}

placement() {
  write "$ETC/placement/placement.conf" <<EOF
[placement_database]
connection = $DB/placement?charset=utf8
[api]
auth_strategy = keystone
[keystone_authtoken]
$(authtoken placement)
EOF
  wsgi_module placement_app placement-api "" "from placement.wsgi.api import application" \
    "os.environ['OS_PLACEMENT_CONFIG_DIR'] = '$ETC/placement'"
  once placement-db "$VENV/bin/placement-manage" --config-file "$ETC/placement/placement.conf" db sync
  gunicorn placement 8778 placement_app
}

# once NAME COMMAND...: run a set-up step a single time (marker file), logging to NAME.log
once() {
  local name=$1; shift
  [[ -f $DATA/.$name ]] && return 0
  say "$name"
  "$@" >>"$LOGS/$name.log" 2>&1 || die "$name failed; see $LOGS/$name.log"
  touch "$DATA/.$name"
}

# ------------------------------------------------------------------ nova
nova() {
  mkdir -p "$DATA/nova/instances" "$DATA/locks" "$ETC/nova"
  cp "$VENV/etc/nova/api-paste.ini" "$ETC/nova/api-paste.ini"
  write "$ETC/nova/nova.conf" <<EOF
[DEFAULT]
host = flatstack-compute1
my_ip = $HOST
transport_url = $TRANSPORT
compute_driver = fake.FakeDriverWithoutFakeNodes
state_path = $DATA/nova
instances_path = $DATA/nova/instances
osapi_compute_workers = 1
metadata_workers = 1
vif_plugging_is_fatal = false
vif_plugging_timeout = 0
heal_instance_info_cache_interval = -1
graceful_shutdown_timeout = 5
[api]
auth_strategy = keystone
[wsgi]
api_paste_config = $ETC/nova/api-paste.ini
[api_database]
connection = $DB/nova_api?charset=utf8
[database]
connection = $DB/nova?charset=utf8
[conductor]
workers = 1
[scheduler]
workers = 1
discover_hosts_in_cells_interval = 10
[keystone_authtoken]
$(authtoken nova)
[service_user]
send_service_user_token = true
$(service_auth nova)
[placement]
$(service_auth placement)
[neutron]
$(service_auth neutron)
[cinder]
os_region_name = RegionOne
$(service_auth cinder)
[glance]
region_name = RegionOne
[oslo_concurrency]
lock_path = $DATA/locks
[oslo_messaging_notifications]
driver = noop
[vnc]
enabled = false
EOF
  # nova-compute must not see the databases; each compute host has its own name and state
  # (Nova records the compute node's identity in state_path).
  local i state
  for ((i = 1; i <= COMPUTE_HOSTS; i++)); do
    state=$DATA/nova
    ((i == 1)) || state=$DATA/nova-compute$i
    mkdir -p "$state/instances"
    sed "/^\[api_database\]/,+1d; /^\[database\]/,+1d; s|^host = .*|host = flatstack-compute$i|;
      s|^state_path = .*|state_path = $state|; s|^instances_path = .*|instances_path = $state/instances|" \
      "$ETC/nova/nova.conf" >"$ETC/nova/nova-compute$i.conf"
  done
  wsgi_module nova_api_app nova-api-os-compute "" "from nova.wsgi.osapi_compute import application" \
    "os.environ['OS_NOVA_CONFIG_DIR'] = '$ETC/nova'"
  local manage=("$VENV/bin/nova-manage" --config-file "$ETC/nova/nova.conf")
  once nova-api-db "${manage[@]}" api_db sync
  once nova-cell0 "${manage[@]}" cell_v2 map_cell0 --database_connection "$DB/nova_cell0?charset=utf8"
  once nova-cell1 "${manage[@]}" cell_v2 create_cell --name cell1 \
    --database_connection "$DB/nova?charset=utf8" --transport-url "$TRANSPORT"
  once nova-db "${manage[@]}" db sync
  gunicorn nova-api 8774 nova_api_app
  launch nova-conductor "$VENV/bin/nova-conductor" --config-file "$ETC/nova/nova.conf"
  launch nova-scheduler "$VENV/bin/nova-scheduler" --config-file "$ETC/nova/nova.conf"
  for ((i = 1; i <= COMPUTE_HOSTS; i++)); do
    launch "nova-compute$i" "$VENV/bin/nova-compute" --config-file "$ETC/nova/nova-compute$i.conf"
  done
}

nova_ready() {
  local i
  for ((i = 1; i <= COMPUTE_HOSTS; i++)); do
    await "nova-compute$i" 180 fresh_heartbeat compute nova-compute "flatstack-compute$i"
  done
  "$VENV/bin/nova-manage" --config-file "$ETC/nova/nova.conf" cell_v2 discover_hosts \
    >>"$LOGS/nova-discover.log" 2>&1 || die "discovering the compute hosts failed; see $LOGS/nova-discover.log"
  await placement:providers 120 bash -c \
    "'$VENV/bin/openstack' --os-cloud local-admin resource provider list -f value -c name 2>/dev/null | test \$(grep -c '^flatstack-compute') -ge $COMPUTE_HOSTS"
  if [[ ! -f $DATA/.flavors ]]; then
    # Jetstream2's CPU flavors: name, vCPUs, RAM MiB, root disk GB
    local name vcpus ram disk
    while read -r name vcpus ram disk; do
      admin flavor show "$name" >/dev/null 2>&1 ||
        admin flavor create --public --vcpus "$vcpus" --ram "$ram" --disk "$disk" "$name" >/dev/null
    done <<EOF
m3.tiny 1 3072 20
m3.small 2 6144 20
m3.quad 4 15360 20
m3.medium 8 30720 60
EOF
    touch "$DATA/.flavors"
  fi
}

# ------------------------------------------------------------------ neutron
neutron() {
  mkdir -p "$DATA/neutron" "$DATA/locks" "$ETC/neutron/plugins/ml2"
  cp "$VENV/etc/neutron/api-paste.ini" "$ETC/neutron/api-paste.ini"
  write "$ETC/neutron/neutron.conf" <<EOF
[DEFAULT]
core_plugin = ml2
service_plugins = router
auth_strategy = keystone
transport_url = $TRANSPORT
state_path = $DATA/neutron
api_paste_config = $ETC/neutron/api-paste.ini
allow_overlapping_ips = true
api_workers = 1
rpc_workers = 0
rpc_state_report_workers = 0
dhcp_agent_notification = false
router_auto_schedule = false
network_auto_schedule = false
graceful_shutdown_timeout = 5
notify_nova_on_port_status_changes = true
notify_nova_on_port_data_changes = true
[database]
connection = $DB/neutron?charset=utf8
[keystone_authtoken]
$(authtoken neutron)
[nova]
$(service_auth nova)
[placement]
$(service_auth neutron)
[oslo_concurrency]
lock_path = $DATA/locks
[oslo_messaging_notifications]
driver = noop
EOF
  write "$ETC/neutron/plugins/ml2/ml2_conf.ini" <<EOF
[ml2]
type_drivers = flat,vlan,vxlan
project_network_types = vxlan
mechanism_drivers = agentless
extension_drivers = port_security
[ml2_type_flat]
flat_networks = public
[ml2_type_vxlan]
vni_ranges = 1:10000
[securitygroup]
enable_security_group = true
EOF
  local config="--config-file $ETC/neutron/neutron.conf --config-file $ETC/neutron/plugins/ml2/ml2_conf.ini"
  wsgi_module neutron_app neutron-api "$config" "from neutron.wsgi.api import application" ""
  # shellcheck disable=SC2086
  once neutron-db "$VENV/bin/neutron-db-manage" $config upgrade heads
  gunicorn neutron-api 9696 neutron_app
}

# Room for the test suite's clusters, which run side by side in the demo project.
project_quotas() {
  [[ -f $DATA/.quotas ]] && return 0
  admin quota set --instances 60 --cores 120 --ram 409600 --server-groups 50 --ports 500 \
    --floating-ips 60 --networks 100 --routers 50 --secgroups 100 --secgroup-rules 1000 \
    --volumes 50 --gigabytes 1000 demo >>"$LOGS/quotas.log" 2>&1 || die "setting the demo project's quotas failed; see $LOGS/quotas.log"
  touch "$DATA/.quotas"
}

# The floating-IP pools: 203.0.113.10-250 without the addresses in
# FLATSTACK_RESERVED_ADDRESSES (package registries this machine reaches inside the range, which
# scripts/test.sh keeps a host route to: never handed out as a floating IP).
public_pools() {
  local start=10 octet address
  local -a reserved=()
  for address in ${FLATSTACK_RESERVED_ADDRESSES:-}; do
    [[ $address == 203.0.113.* ]] && reserved+=("${address##*.}")
  done
  if ((${#reserved[@]})); then
    mapfile -t reserved < <(printf '%s\n' "${reserved[@]}" | sort -n -u)
  fi
  for octet in "${reserved[@]}"; do
    ((octet < start || octet > 250)) && continue
    ((octet > start)) && echo "--allocation-pool start=203.0.113.$start,end=203.0.113.$((octet - 1))"
    start=$((octet + 1))
  done
  ((start <= 250)) && echo "--allocation-pool start=203.0.113.$start,end=203.0.113.250"
  return 0
}

neutron_ready() {
  local pools
  pools=$(public_pools | tr '\n' ' ')
  [[ -f $DATA/.public-network && $(cat "$DATA/.public-network") == "$pools" ]] && return 0
  say "neutron: external network public with floating IP pools $pools"
  admin network show public >/dev/null 2>&1 || admin network create --external --share \
    --provider-network-type flat --provider-physical-network public public >/dev/null
  # shellcheck disable=SC2086
  if admin subnet show public-subnet >/dev/null 2>&1; then
    admin subnet set --no-allocation-pool $pools public-subnet >/dev/null
  else
    admin subnet create --network public --subnet-range 203.0.113.0/24 $pools \
      --gateway 203.0.113.1 --no-dhcp public-subnet >/dev/null
  fi
  echo "$pools" >"$DATA/.public-network"
}

# ------------------------------------------------------------------ cinder
cinder() {
  mkdir -p "$DATA/cinder" "$DATA/locks" "$ETC/cinder"
  cp "$VENV/etc/cinder/api-paste.ini" "$VENV/etc/cinder/resource_filters.json" "$ETC/cinder/"
  write "$ETC/cinder/cinder.conf" <<EOF
[DEFAULT]
transport_url = $TRANSPORT
auth_strategy = keystone
state_path = $DATA/cinder
api_paste_config = $ETC/cinder/api-paste.ini
osapi_volume_workers = 1
enabled_backends = fake
default_volume_type = fake
my_ip = $HOST
graceful_shutdown_timeout = 5
resource_query_filters_file = $ETC/cinder/resource_filters.json
[database]
connection = $DB/cinder?charset=utf8
[keystone_authtoken]
$(authtoken cinder)
[service_user]
send_service_user_token = true
$(service_auth cinder)
[nova]
$(service_auth nova)
[oslo_concurrency]
lock_path = $DATA/locks
[oslo_messaging_notifications]
driver = noop
[fake]
volume_driver = cinder.tests.fake_driver.FakeLoggingVolumeDriver
volume_backend_name = fake
EOF
  local config="--config-file $ETC/cinder/cinder.conf"
  wsgi_module cinder_app cinder-api "$config" "from cinder.wsgi.api import application" ""
  # shellcheck disable=SC2086
  once cinder-db "$VENV/bin/cinder-manage" $config db sync
  gunicorn cinder-api 8776 cinder_app
  # shellcheck disable=SC2086
  launch cinder-scheduler "$VENV/bin/cinder-scheduler" $config
  # shellcheck disable=SC2086
  launch cinder-volume "$VENV/bin/cinder-volume" $config
}

cinder_ready() {
  if [[ ! -f $DATA/.volume-type ]]; then
    admin volume type show fake >/dev/null 2>&1 ||
      admin volume type create --public --property volume_backend_name=fake fake >/dev/null
    touch "$DATA/.volume-type"
  fi
  await cinder-volume 120 fresh_heartbeat volume cinder-volume
}

# ------------------------------------------------------------------ octavia
# The load-balancer service user and catalog entry (a step of its own, so clouds set up before
# Octavia joined the rig get them too).
octavia_objects() {
  [[ -f $DATA/keystone/.octavia ]] && return 0
  say "keystone: the load-balancer service"
  "$VENV/bin/python" - "$PASSWORD" "$HOST" >>"$LOGS/keystone-objects.log" 2>&1 <<'PY' ||
import sys, openstack
password, host = sys.argv[1:3]
identity = openstack.connect(cloud='local-admin').identity
domain = identity.find_domain('default')
service_project = identity.find_project('service')
user = identity.find_user('octavia', ignore_missing=True) or identity.create_user(
    name='octavia', password=password, domain_id=domain.id)
for role in ('admin', 'service'):
    identity.assign_project_role_to_user(service_project, user, identity.find_role(role))
# Octavia's default policy lets project members use load balancers only with this role.
member = identity.find_role('load-balancer_member', ignore_missing=True) or identity.create_role(
    name='load-balancer_member')
identity.assign_project_role_to_user(identity.find_project('demo'), identity.find_user('demo'), member)
service = next((s for s in identity.services() if s.type == 'load-balancer'), None) or \
    identity.create_service(name='octavia', type='load-balancer')
have = {e.interface for e in identity.endpoints() if e.service_id == service.id}
for interface in ('public', 'internal', 'admin'):
    if interface not in have:
        identity.create_endpoint(service_id=service.id, interface=interface,
                                 url=f'http://{host}:9876', region_id='RegionOne')
PY
    die "creating Octavia's keystone objects failed; see $LOGS/keystone-objects.log"
  touch "$DATA/keystone/.octavia"
}

# Octavia's no-op network driver makes up every port, subnet and network it is asked about, so
# the API refuses a load balancer on a port made beforehand (`vip_port_id`): "VIP port's subnet
# could not be determined". This driver keeps every plumbing call a no-op (no amphora exists)
# but answers port, subnet and network lookups from the real Neutron, which is what Octavia's
# API validates a `vip_port_id` against (api/v2/controllers/load_balancer.py,
# common/validate.py). Lookups of the made-up ports the no-op steps create stay made up. It is
# registered as a stevedore entry point by a dist-info of its own in the virtualenv.
octavia_network_driver() {
  local site info
  site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  write "$site/flatstack_octavia_network.py" <<'PY'
"""No-op Octavia networking whose lookups of real resources come from Neutron (flatstack rig)."""
import openstack.exceptions as os_exc
from octavia.common import clients
from octavia.network import base
from octavia.network.drivers.neutron import utils
from octavia.network.drivers.noop_driver import driver as noop

NOT_FOUND = {'port': base.PortNotFound, 'subnet': base.SubnetNotFound,
             'network': base.NetworkNotFound}


class NeutronLookupNoopDriver(noop.NoopNetworkDriver):
    def _lookup(self, kind, resource_id, fallback):
        neutron = clients.NeutronAuth.get_neutron_client().network
        try:
            found = getattr(neutron, 'get_' + kind)(resource_id)
        except os_exc.ResourceNotFound as e:
            if fallback is not None:
                return fallback(resource_id)
            raise NOT_FOUND[kind](str(e)) from e
        return getattr(utils, 'convert_%s_to_model' % kind)(found)

    # The API passes a context when it validates a request; the worker's no-op steps do not,
    # and may ask about the ports and networks the no-op driver made up.
    def get_port(self, port_id, context=None):
        fallback = None if context is not None else super().get_port
        return self._lookup('port', port_id, fallback)

    def get_subnet(self, subnet_id, context=None):
        fallback = None if context is not None else super().get_subnet
        return self._lookup('subnet', subnet_id, fallback)

    def get_network(self, network_id, context=None):
        fallback = None if context is not None else super().get_network
        return self._lookup('network', network_id, fallback)
PY
  info=$site/flatstack_octavia_network-0.0.0.dist-info
  printf 'Metadata-Version: 2.1\nName: flatstack-octavia-network\nVersion: 0.0.0\n' | write "$info/METADATA"
  printf '[octavia.network.drivers]\nflatstack_neutron_lookup_driver = flatstack_octavia_network:NeutronLookupNoopDriver\n' |
    write "$info/entry_points.txt"
}

octavia() {
  octavia_network_driver
  mkdir -p "$DATA/octavia/certs" "$ETC/octavia"
  # Octavia signs amphora certificates even with no amphora: a throwaway CA of its own.
  if [[ ! -f $DATA/octavia/certs/ca.pem ]]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=local-octavia-ca \
      -keyout "$DATA/octavia/certs/ca.key" -out "$DATA/octavia/certs/ca.pem" \
      >"$LOGS/octavia-ca.log" 2>&1 || die "making Octavia's CA failed; see $LOGS/octavia-ca.log"
  fi
  write "$ETC/octavia/octavia.conf" <<EOF
[DEFAULT]
transport_url = $TRANSPORT
graceful_shutdown_timeout = 5
[api_settings]
auth_strategy = keystone
enabled_provider_drivers = amphora:'Octavia amphora over no-op drivers'
default_provider_driver = amphora
[database]
connection = $DB/octavia?charset=utf8
[keystone_authtoken]
$(authtoken octavia)
[service_auth]
$(service_auth octavia)
[controller_worker]
client_ca = $DATA/octavia/certs/ca.pem
amphora_driver = amphora_noop_driver
compute_driver = compute_noop_driver
network_driver = flatstack_neutron_lookup_driver
volume_driver = volume_noop_driver
image_driver = image_noop_driver
loadbalancer_topology = SINGLE
workers = 1
[certificates]
cert_manager = noop_cert_manager
ca_certificate = $DATA/octavia/certs/ca.pem
ca_private_key = $DATA/octavia/certs/ca.key
[task_flow]
jobboard_enabled = False
[oslo_messaging]
topic = octavia_prov
[oslo_messaging_notifications]
driver = noop
EOF
  local config="--config-file $ETC/octavia/octavia.conf"
  wsgi_module octavia_app octavia-api "$config" "from octavia.wsgi.api import application" ""
  # shellcheck disable=SC2086
  once octavia-db "$VENV/bin/octavia-db-manage" $config upgrade head
  gunicorn octavia-api 9876 octavia_app
  # shellcheck disable=SC2086
  launch octavia-worker "$VENV/bin/octavia-worker" $config
}

# ------------------------------------------------------------------ swift
# One device, one replica: the account, container and object servers on their usual ports,
# the proxy on 8080 with Keystone's auth, the S3 API and temporary URLs. As Swift's s3api
# docs order them: authtoken (which drops identity headers it did not set), then s3api, then
# s3token (EC2 credentials checked by Keystone, which wants a service user's token with
# them), then keystoneauth. Each server runs in one process (workers = 0), logging to its log file.
swift_server_conf() { # swift_server_conf KIND PORT
  cat <<EOF
[DEFAULT]
bind_ip = $HOST
bind_port = $2
workers = 0
devices = $DATA/swift/node
mount_check = false
swift_dir = $ETC/swift
log_name = swift-$1
[pipeline:main]
pipeline = healthcheck $1-server
[app:$1-server]
use = egg:swift#$1
[filter:healthcheck]
use = egg:swift#healthcheck
EOF
}

swift() {
  mkdir -p "$DATA/swift/node/d1" "$ETC/swift"
  write "$ETC/swift/swift.conf" <<EOF
[swift-hash]
swift_hash_path_prefix = flatstack-local
swift_hash_path_suffix = flatstack-local
[storage-policy:0]
name = Policy-0
default = yes
EOF
  local kind port
  for kind in account:6202 container:6201 object:6200; do
    port=${kind#*:} kind=${kind%%:*}
    swift_server_conf "$kind" "$port" | write "$ETC/swift/$kind-server.conf"
    if [[ ! -f $ETC/swift/$kind.ring.gz ]]; then
      {
        "$VENV/bin/swift-ring-builder" "$ETC/swift/$kind.builder" create 8 1 1 &&
          "$VENV/bin/swift-ring-builder" "$ETC/swift/$kind.builder" add \
            --region 1 --zone 1 --ip "$HOST" --port "$port" --device d1 --weight 100 &&
          "$VENV/bin/swift-ring-builder" "$ETC/swift/$kind.builder" rebalance
      } >>"$LOGS/swift-rings.log" 2>&1 || [[ -f $ETC/swift/$kind.ring.gz ]] ||
        die "building Swift's $kind ring failed; see $LOGS/swift-rings.log"
    fi
  done
  write "$ETC/swift/proxy-server.conf" <<EOF
[DEFAULT]
bind_ip = $HOST
bind_port = 8080
workers = 0
swift_dir = $ETC/swift
log_name = swift-proxy
[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk tempurl authtoken s3api s3token keystoneauth copy slo dlo versioned_writes proxy-logging proxy-server
[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
[filter:catch_errors]
use = egg:swift#catch_errors
[filter:gatekeeper]
use = egg:swift#gatekeeper
[filter:healthcheck]
use = egg:swift#healthcheck
[filter:proxy-logging]
use = egg:swift#proxy_logging
[filter:cache]
use = egg:swift#memcache
memcache_servers = $HOST:11212
[filter:listing_formats]
use = egg:swift#listing_formats
[filter:bulk]
use = egg:swift#bulk
[filter:tempurl]
use = egg:swift#tempurl
[filter:s3api]
use = egg:swift#s3api
location = RegionOne
[filter:s3token]
use = egg:swift#s3token
auth_uri = $KEYSTONE/v3
$(service_auth swift)
[filter:authtoken]
paste.filter_factory = keystonemiddleware.auth_token:filter_factory
delay_auth_decision = true
$(authtoken swift)
[filter:keystoneauth]
use = egg:swift#keystoneauth
operator_roles = admin, member
[filter:copy]
use = egg:swift#copy
[filter:slo]
use = egg:swift#slo
[filter:dlo]
use = egg:swift#dlo
[filter:versioned_writes]
use = egg:swift#versioned_writes
EOF
  for kind in account container object; do
    launch "swift-$kind" "$VENV/bin/swift-$kind-server" "$ETC/swift/$kind-server.conf" --verbose
  done
  launch swift-proxy "$VENV/bin/swift-proxy-server" "$ETC/swift/proxy-server.conf" --verbose
}

# ------------------------------------------------------------------ commands
up() {
  mkdir -p "$LOGS" "$PIDS" "$DATA" "$ETC" "$WSGI" "$RUN"
  export PATH=$VENV/bin:/usr/sbin:/usr/bin:/sbin:/bin
  # The caller's OS_* variables must not steer the set-up commands.
  local variable
  for variable in $(compgen -e | grep '^OS_' || true); do unset "$variable"; done
  export OS_CLIENT_CONFIG_FILE=$ROOT/clouds.yaml
  install
  infrastructure
  keystone
  write_clouds_yaml
  await keystone 120 http_ok "$KEYSTONE/v3"
  keystone_objects
  swift_objects
  octavia_objects
  swift
  glance
  placement
  nova
  neutron
  cinder
  octavia
  await glance 120 http_ok "http://$HOST:9292/versions"
  await placement 120 http_ok "http://$HOST:8778/"
  await nova-api 120 http_ok "http://$HOST:8774/"
  await neutron-api 120 http_ok "http://$HOST:9696/"
  await cinder-api 120 http_ok "http://$HOST:8776/"
  await octavia-api 120 http_ok "http://$HOST:9876/"
  await swift-proxy 120 http_ok "http://$HOST:8080/healthcheck"
  nova_ready
  neutron_ready
  cinder_ready
  project_quotas
  say "OpenStack is up on $HOST; clouds.yaml: $ROOT/clouds.yaml (local-admin, local-demo)"
}

down() {
  local name
  for name in "${SERVICES[@]}" "${LEGACY[@]}"; do stop_one "$name" & done
  wait
  for name in "${INFRA[@]}"; do stop_one "$name"; done
}

status() {
  local name all_up=0
  for name in "${INFRA[@]}" "${SERVICES[@]}"; do
    if running "$name"; then
      printf '%-18s running (pid %s)  %s\n' "$name" "$(cat "$PIDS/$name.pid")" "$LOGS/$name.log"
    else
      printf '%-18s stopped            %s\n' "$name" "$LOGS/$name.log"
      all_up=1
    fi
  done
  return $all_up
}

# api-instance SERVICE PORT: exec a second API server of the running cloud on PORT.
api_instance() {
  local module
  case ${1:-} in
    compute) module=nova_api_app ;;
    network) module=neutron_app ;;
    *) echo "usage: $0 api-instance compute|network PORT" >&2; exit 2 ;;
  esac
  [[ ${2:-} =~ ^[0-9]+$ ]] || { echo "usage: $0 api-instance compute|network PORT" >&2; exit 2; }
  [[ -f $WSGI/$module.py ]] || { echo "local-openstack: not set up yet; run \`$0 up\` first" >&2; exit 1; }
  exec "$VENV/bin/gunicorn" --pythonpath "$WSGI" -b "$HOST:$2" -w 1 -k gthread --threads 8 \
    --timeout 300 --graceful-timeout 2 --name "$1-api-$2" "$module:application"
}

case ${1:-} in
  up) up ;;
  api-instance) shift; api_instance "$@" ;;
  down) down ;;
  status) status ;;
  env) echo "export OS_CLIENT_CONFIG_FILE=$ROOT/clouds.yaml OS_CLOUD=local-demo PATH=$VENV/bin:\$PATH" ;;
  *) echo "usage: $0 up|down|status|env|api-instance" >&2; exit 2 ;;
esac
