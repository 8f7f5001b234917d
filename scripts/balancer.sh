# Sourced by cluster-test.sh and scale-bench.sh: the HAProxy configuration in front of local
# cartstream instances, the shape docs/deploy.md describes. It names the instance that answered
# in `X-Served-By` (s1, s2, ... in the order given), health-checks each on /health every 300 ms
# when CHECKS is set, and keeps WebSockets open as tunnels.
#
# balancer_config BIND_PORT INSTANCE_PORT...: prints the configuration.
balancer_config() {
    local bind=$1 n=0 check=""
    shift
    [ -n "${CHECKS:-}" ] && check=" check"
    cat <<CFG
global
    maxconn 4096
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout tunnel 120s
    option redispatch
    retries 2
frontend cartstream
    bind 127.0.0.1:$bind
    option forwardfor
    default_backend instances
backend instances
    balance roundrobin
    option httpchk GET /health
    default-server inter 300ms fall 2 rise 2
    http-response set-header X-Served-By %s
CFG
    for port in "$@"; do
        n=$((n + 1))
        echo "    server s$n 127.0.0.1:$port$check"
    done
}
