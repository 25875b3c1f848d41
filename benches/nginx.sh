# Sourced by the benchmark scripts that run nginx (serve.sh, s3.sh).
#
# nginx_conf DIR WORKERS CONNECTIONS HTTP_BODY: writes DIR/nginx.conf for a
# throw-away nginx whose pid, error log and temp folders all live in DIR
# (run it with `-p DIR -e DIR/error.log -c DIR/nginx.conf`), with HTTP_BODY
# (e.g. `include` lines of site files) inside its http block.
nginx_conf() {
    local dir=$1 workers=$2 connections=$3 body=$4 user_line=""
    # As root, nginx's workers would otherwise run as nobody, who cannot read
    # the benchmarks' files.
    [ "$(id -u)" -eq 0 ] && user_line="user root;"
    mkdir -p "$dir"/{client_body,proxy,fastcgi,uwsgi,scgi}
    cat >"$dir/nginx.conf" <<CONF
$user_line
daemon off;
worker_processes $workers;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections $connections; }
http {
  include /etc/nginx/mime.types;
  default_type application/octet-stream;
  client_body_temp_path $dir/client_body; proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi; uwsgi_temp_path $dir/uwsgi; scgi_temp_path $dir/scgi;
$body
}
CONF
}
