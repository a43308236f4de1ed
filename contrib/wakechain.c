/*
 * wakechain.c - what a wake-up between processes costs on this machine.
 *
 * A driver wakes process 1 through an eventfd, process 1 wakes process 2,
 * ..., the last wakes the driver: one round trip crosses hops + 1 process
 * boundaries, each an eventfd write and an epoll_wait return, as between
 * iotd's worker, router and worker. The driver starts a round trip every
 * millisecond (the benchmark's latency scenario runs at 1,000 msg/s, so
 * every process sleeps between messages) and prints the median and 99th
 * percentile of the round trip. Run it under `taskset -c 0` to see the
 * same chain with every process on one CPU.
 *
 *   build/contrib/wakechain [HOPS [ROUNDS]]     (defaults: 3 hops, 3000 rounds)
 */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_HOPS 16

static int efd[MAX_HOPS + 1];   /* efd[i] wakes process i + 1; efd[hops] wakes the driver */

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void die(const char *what)
{
	fprintf(stderr, "wakechain: %s: %s\n", what, strerror(errno));
	exit(2);
}

static void wake(int fd)
{
	uint64_t one = 1;

	if (write(fd, &one, sizeof(one)) != sizeof(one))
		die("eventfd write");
}

/* Sleep in epoll_wait until fd is readable, then reset it, as iotd's processes do. */
static void wait_woken(int ep, int fd)
{
	struct epoll_event ev;
	uint64_t count;

	while (epoll_wait(ep, &ev, 1, -1) < 1)
		if (errno != EINTR)
			die("epoll_wait");
	if (read(fd, &count, sizeof(count)) < 0 && errno != EAGAIN)
		die("eventfd read");
}

static int watch(int fd)
{
	struct epoll_event ev = { .events = EPOLLIN };
	int ep = epoll_create1(EPOLL_CLOEXEC);

	if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0)
		die("epoll");
	return ep;
}

static void relay(int in, int out)
{
	int ep = watch(in);

	prctl(PR_SET_PDEATHSIG, SIGKILL);
	for (;;) {
		wait_woken(ep, in);
		wake(out);
	}
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
	int hops = argc > 1 ? atoi(argv[1]) : 3, rounds = argc > 2 ? atoi(argv[2]) : 3000;
	struct timespec gap = { 0, 1000000 };
	pid_t pids[MAX_HOPS];
	uint64_t *rtt;
	int ep;

	if (hops < 1 || hops > MAX_HOPS || rounds < 100) {
		fprintf(stderr, "usage: wakechain [HOPS (1-%d) [ROUNDS (>= 100)]]\n", MAX_HOPS);
		return 2;
	}
	for (int i = 0; i <= hops; i++)
		if ((efd[i] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0)
			die("eventfd");
	for (int i = 0; i < hops; i++) {
		pids[i] = fork();
		if (pids[i] < 0)
			die("fork");
		if (pids[i] == 0)
			relay(efd[i], efd[i + 1]);
	}
	rtt = calloc((size_t)rounds, sizeof(*rtt));
	if (!rtt)
		die("calloc");
	ep = watch(efd[hops]);
	for (int n = 0; n < rounds; n++) {
		uint64_t t0;

		nanosleep(&gap, NULL);
		t0 = now_ns();
		wake(efd[0]);
		wait_woken(ep, efd[hops]);
		rtt[n] = now_ns() - t0;
	}
	for (int i = 0; i < hops; i++) {
		kill(pids[i], SIGKILL);
		waitpid(pids[i], NULL, 0);
	}
	qsort(rtt, (size_t)rounds, sizeof(*rtt), cmp_u64);
	printf("%d processes in the chain, %d wake-ups a round trip: p50 %.1f us, p99 %.1f us\n",
	       hops, hops + 1, (double)rtt[rounds / 2] / 1e3, (double)rtt[rounds * 99 / 100] / 1e3);
	free(rtt);
	return 0;
}
