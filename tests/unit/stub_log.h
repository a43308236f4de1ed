/*
 * stub_log.h - minimal stand-ins for log.c, for building one unit test
 * against a few common/ sources without the rest of iotd.
 *
 * Active only when the test build defines IOTD_TEST_STUB_LOG; the normal
 * build links the real log.c from libiotd.a, and two definitions of
 * fatal() would clash there.
 */
#ifndef IOTD_TEST_STUB_LOG_H
#define IOTD_TEST_STUB_LOG_H

#ifdef IOTD_TEST_STUB_LOG
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "log.h"

noreturn void fatal(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fputs("fatal: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	abort();
}
#endif

#endif
