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
# default_start/_stop/_status are OpenRC's own dispatch, byte for byte, with one branch added
# in front. Settings: UPKEEPER_CONFIG (the controller file) and upkeeper_timeout (seconds that
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
