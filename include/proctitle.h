/*
 * proctitle.h - process titles written over argv, as ps(1) shows them.
 *
 * proctitle_init() must run first in main(): it moves argv's strings and
 * the environment to the heap, so that the memory they occupied can hold
 * "iotd: worker 3" for /proc/PID/cmdline.
 */
#ifndef IOTD_PROCTITLE_H
#define IOTD_PROCTITLE_H

void proctitle_init(int argc, char **argv);
/* Sets the title ("iotd: router") and the kernel's comm name. */
void proctitle_set(const char *title);

#endif
