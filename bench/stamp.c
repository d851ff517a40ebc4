/*
 * stamp: the service every supervisor runs in bench/buddy.py.
 *
 * At start it appends "S <CLOCK_MONOTONIC ns>\n" to the file named by $STAMP_FILE, sleeps
 * $LIFETIME_MS milliseconds (default 1100; -1 sleeps forever), appends "E <ns>\n" and exits 0.
 * The restart gap of a supervisor is the next "S" minus the previous "E".
 *
 * Readiness: if $NOTIFY_FD names a descriptor that is a pipe, stamp writes one newline to it
 * (and closes it) right after the "S" stamp. s6-supervise reads that (its `notification-fd`
 * file); without it, s6-supervise 2.11 waits 1 s after every death of a service that never
 * said it was ready. The other supervisors do not open that descriptor, so for them this is a
 * failed fstat.
 *
 * Output: with $STAMP_SAY (or a fourth argument) "1", it also writes a line to stdout after
 * its "S" and one to stderr before its "E", so that a supervisor that keeps what a service
 * wrote has something to keep (fastpath.py --say).
 *
 * Build: cc -O2 -static -o stamp stamp.c   (dynamic linking also works)
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>

static void stamp(const char *path, char kind)
{
	struct timespec ts;
	char line[64];
	int fd, n;

	if (!path || !*path)
		return;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	n = snprintf(line, sizeof line, "%c %lld\n", kind,
		     (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec);
	fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0)
		return;
	/* One write of a short line to an O_APPEND file: never interleaved. */
	if (write(fd, line, (size_t)n) != n) {
		/* nothing sensible to do: the bench notices a missing stamp */
	}
	close(fd);
}

static const char *stamp_path;

/* "T <ns>\n" with nothing but async-signal-safe calls, then death by SIGTERM. */
static void on_term(int sig)
{
	struct timespec ts;
	char buf[32], *p = buf + sizeof buf;
	unsigned long long ns;
	int fd;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	ns = (unsigned long long)ts.tv_sec * 1000000000ULL + (unsigned long long)ts.tv_nsec;
	*--p = '\n';
	do {
		*--p = (char)('0' + ns % 10);
		ns /= 10;
	} while (ns);
	*--p = ' ';
	*--p = 'T';
	if (stamp_path && *stamp_path) {
		fd = open(stamp_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
		if (fd >= 0) {
			if (write(fd, p, (size_t)(buf + sizeof buf - p)) < 0) {
				/* the bench notices a missing stamp */
			}
			close(fd);
		}
	}
	signal(sig, SIG_DFL);
	raise(sig);
}

int main(int argc, char **argv)
{
	/* The variables win when set: s6-supervise runs ./run with the service directory as
	 * argv[1] (fastpath.py --no-shell makes ./run this program); the buddy clears the
	 * environment, so its services get their settings as arguments. */
	const char *path = getenv("STAMP_FILE") ? getenv("STAMP_FILE") : argc > 1 ? argv[1] : NULL;
	const char *life = getenv("LIFETIME_MS") ? getenv("LIFETIME_MS") : argc > 2 ? argv[2] : NULL;
	long ms = life && *life ? strtol(life, NULL, 10) : 1100;
	const char *notify = getenv("NOTIFY_FD") ? getenv("NOTIFY_FD") : argc > 3 ? argv[3] : NULL;
	const char *say = getenv("STAMP_SAY") ? getenv("STAMP_SAY") : argc > 4 ? argv[4] : NULL;
	int chatty = say && say[0] == '1';
	struct timespec req, rem;
	struct stat st;
	struct sigaction sa;

	stamp_path = path;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_term;
	sigaction(SIGTERM, &sa, NULL);
	stamp(path, 'S');
	if (chatty) {
		static const char up[] = "stamp: serving requests on 127.0.0.1:8080\n";
		if (write(1, up, sizeof up - 1) < 0) {
			/* nowhere to say it: fine */
		}
	}
	if (notify && *notify) {
		int fd = atoi(notify);
		if (fd > 2 && fstat(fd, &st) == 0 && S_ISFIFO(st.st_mode)) {
			if (write(fd, "\n", 1) != 1) {
				/* the supervisor then just treats the service as not ready */
			}
			close(fd);
		}
	}
	if (ms < 0) {
		for (;;)
			pause();
	}
	req.tv_sec = ms / 1000;
	req.tv_nsec = (ms % 1000) * 1000000L;
	while (nanosleep(&req, &rem) < 0 && errno == EINTR)
		req = rem;
	if (chatty) {
		static const char bye[] = "stamp: lifetime over, exiting with status 0\n";
		if (write(2, bye, sizeof bye - 1) < 0) {
			/* nowhere to say it: fine */
		}
	}
	stamp(path, 'E');
	return 0;
}
