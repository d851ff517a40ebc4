# upkeeper's OpenRC supervisor glue: `supervisor=upkeeper` (or the historical
# `rc_supervise_module=upkeeper`) in an ordinary OpenRC service script hands its daemon to
# upkeeper (docs/integration.md, "OpenRC services supervised by upkeeper").
#
# Installed as /usr/lib/upkeeper/openrc.sh. Use it per script, in the script or its conf.d file:
#   supervisor=upkeeper
#   . /usr/lib/upkeeper/openrc.sh
# or for every script with /etc/rc.conf.d/upkeeper.conf, which sources this file.
#
# openrc-run.sh and gendepends.sh both source this file, so it only defines functions. The
# logic is in `upkctl openrc` (crates/upkctl/src/openrc.rs); this file passes the variables on.
# default_start/_stop/_status/_reload are OpenRC's own dispatch, byte for byte, with one branch
# added in front (default_reload and the reload() template are those of OpenRC 0.46 and later,
# which 0.45 lacks: a script that lists reload in extra_started_commands and keeps the template,
# or calls default_reload, reloads through upkeeper). Settings: UPKEEPER_CONFIG (the controller file) and upkeeper_timeout (seconds that
# start waits for the service to run, default 30).

_upkeeper_selected()
{
	[ "${supervisor:-}" = upkeeper ] || [ "${rc_supervise_module:-}" = upkeeper ]
}

_upkeeper_ctl()
{
	/usr/bin/upkctl --config "${UPKEEPER_CONFIG:-/etc/upkeeper/upkeeper.conf}" \
		--timeout "${upkeeper_timeout:-30}" openrc "$@"
}

upkeeper_start()
{
	if [ -z "${command:-}" ]; then
		eerror "$RC_SVCNAME: command is not set"
		return 1
	fi
	ebegin "Starting ${name:-$RC_SVCNAME}"
	eval set -- $command $command_args $command_args_foreground
	_upkeeper_ctl start "$RC_SVCNAME" \
		--user="${command_user:-}" --directory="${directory:-}" --umask="${umask:-}" \
		--output-log="${output_log:-}" --error-log="${error_log:-}" \
		--respawn-delay="${respawn_delay:-}" --respawn-max="${respawn_max:-}" \
		--respawn-period="${respawn_period:-}" \
		--retry="${retry:-}" --stopsig="${stopsig:-}" \
		--healthcheck-timer="${healthcheck_timer:-}" \
		--healthcheck-delay="${healthcheck_delay:-}" --notify="${notify:-}" \
		-- "$@" >/dev/null
	eend $?
}

upkeeper_stop()
{
	ebegin "Stopping ${name:-$RC_SVCNAME}"
	_upkeeper_ctl stop "$RC_SVCNAME" >/dev/null
	eend $?
}

# The service's reload action (ExecReload; by default SIGHUP to the daemon), through the
# controller, so it is audited like any other command.
upkeeper_reload()
{
	ebegin "Reloading ${name:-$RC_SVCNAME}"
	/usr/bin/upkctl --config "${UPKEEPER_CONFIG:-/etc/upkeeper/upkeeper.conf}" \
		--timeout "${upkeeper_timeout:-30}" reload "openrc::$RC_SVCNAME" >/dev/null
	eend $?
}

# The daemon record upkeeper_start writes names the buddy's pidfile, so OpenRC's generic
# status (the same test rc-status makes) says started, stopped, or crashed when the buddy died.
upkeeper_status()
{
	_status
}

default_start()
{
	if _upkeeper_selected; then
		upkeeper_start
		return
	fi
	local func=ssd_start
	case "$supervisor" in
		runit) func=runit_start ;;
		s6) func=s6_start ;;
		supervise-daemon) func=supervise_start ;;
		?*)
			ewarn "Invalid supervisor, \"$supervisor\", using start-stop-daemon"
			;;
	esac
	$func
}

default_stop()
{
	if _upkeeper_selected; then
		upkeeper_stop
		return
	fi
	local func=ssd_stop
	case "$supervisor" in
		runit) func=runit_stop ;;
		s6) func=s6_stop ;;
		supervise-daemon) func=supervise_stop ;;
		?*)
			ewarn "Invalid supervisor, \"$supervisor\", using start-stop-daemon"
			;;
	esac
	$func
}

default_status()
{
	if _upkeeper_selected; then
		upkeeper_status
		return
	fi
	local func=ssd_status
	case "$supervisor" in
		runit) func=runit_status ;;
		s6) func=s6_status ;;
		supervise-daemon) func=supervise_status ;;
		?*)
			ewarn "Invalid supervisor, \"$supervisor\", using start-stop-daemon"
			;;
	esac
	$func
}

default_reload()
{
	if _upkeeper_selected; then
		upkeeper_reload
		return
	fi
	case "$supervisor" in
		s6) s6_reload ;;
		?*)
			eerror "$RC_SVCNAME: undefined function 'reload'"
			exit 1
			;;
	esac
}

reload()
{
	default_reload
}
