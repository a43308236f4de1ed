/*
 * proctitle.c - process titles over the original argv area.
 *
 * Owns the argv/environ memory once proctitle_init() has run. Linux shows
 * the bytes between the start of argv[0] and the end of the last contiguous
 * argv/environ string as /proc/PID/cmdline, so the title may use all of it.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>

#include "proctitle.h"

extern char **environ;

static char *title_start;
static size_t title_space;
/*
 * The environment as it was moved, kept whole: unsetenv() (sd_listen_fds()
 * unsets LISTEN_*) drops strings from environ, not from here, so a copy
 * never becomes a leak.
 */
static char **environ_moved;

static char *dup_or_die(const char *s)
{
	char *d = strdup(s);

	if (d == NULL)
		abort();
	return d;
}

static void move_environ(void)
{
	char **env;
	size_t n = 0;

	while (environ[n] != NULL)
		n++;
	env = calloc(n + 1, sizeof(*env));
	if (env == NULL)
		abort();
	environ_moved = calloc(n + 1, sizeof(*environ_moved));
	if (environ_moved == NULL)
		abort();
	for (size_t i = 0; i < n; i++)
		env[i] = environ_moved[i] = dup_or_die(environ[i]);
	environ = env;
}

void proctitle_init(int argc, char **argv)
{
	char *end;

	if (argc <= 0 || argv[0] == NULL)
		return;
	end = argv[0] + strlen(argv[0]) + 1;
	for (int i = 1; i < argc; i++)
		if (argv[i] == end)
			end = argv[i] + strlen(argv[i]) + 1;
	for (int i = 0; environ[i] != NULL; i++)
		if (environ[i] == end)
			end = environ[i] + strlen(environ[i]) + 1;
	move_environ();
	title_start = argv[0];
	title_space = (size_t)(end - argv[0]);
	for (int i = 0; i < argc; i++)
		argv[i] = dup_or_die(argv[i]);
}

void proctitle_set(const char *title)
{
	char comm[16];
	size_t len;

	if (title_start != NULL) {
		len = strlen(title);
		if (len >= title_space)
			len = title_space - 1;
		memset(title_start, 0, title_space);
		memcpy(title_start, title, len);
	}
	/* comm is 15 bytes: "iotd: worker 12" fits, longer titles are cut. */
	strncpy(comm, title, sizeof(comm) - 1);
	comm[sizeof(comm) - 1] = '\0';
	prctl(PR_SET_NAME, comm, 0, 0, 0);
}
