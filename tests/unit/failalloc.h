/*
 * failalloc.h - the allocator as a unit test sees it: how much memory is in
 * use, how many allocations were made, and (without ASan) a chosen
 * allocation that fails, so that the out-of-memory paths run too.
 *
 * Without ASan the test replaces malloc (glibc allows it) and hands every
 * call on to glibc's own allocator, counting live blocks. ASan owns malloc
 * itself: there, memory in use is counted in bytes, allocations through its
 * hooks, and no allocation can be made to fail (TEST_ASAN is defined, and
 * the out-of-memory tests skip).
 *
 * Included by one source file of a test binary only: it defines malloc().
 */
#ifndef IOTD_TEST_FAILALLOC_H
#define IOTD_TEST_FAILALLOC_H

#include <stdbool.h>
#include <stddef.h>

#if defined(__SANITIZE_ADDRESS__)
#define TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TEST_ASAN 1
#endif
#endif

static size_t test_mallocs; /* allocations so far, to prove a path allocates nothing */

#ifdef TEST_ASAN
size_t __sanitizer_get_current_allocated_bytes(void);
int __sanitizer_install_malloc_and_free_hooks(void (*m)(const volatile void *, size_t),
					      void (*f)(const volatile void *));

static void test_malloc_hook(const volatile void *p, size_t n)
{
	test_mallocs++;
}

static void test_free_hook(const volatile void *p)
{
}

__attribute__((constructor)) static void test_count_mallocs(void)
{
	__sanitizer_install_malloc_and_free_hooks(test_malloc_hook, test_free_hook);
}

/* Bytes in use. */
static inline size_t test_live_memory(void)
{
	return __sanitizer_get_current_allocated_bytes();
}
#else
void *__libc_malloc(size_t n);
void *__libc_calloc(size_t n, size_t size);
void *__libc_realloc(void *p, size_t n);
void __libc_free(void *p);

static size_t test_live_blocks;
static long test_fail_after = -1; /* allocations that still succeed; -1: all do */

static bool test_alloc_fails(void)
{
	test_mallocs++;
	if (test_fail_after < 0)
		return false;
	return test_fail_after-- == 0;
}

void *malloc(size_t n)
{
	void *p = test_alloc_fails() ? NULL : __libc_malloc(n);

	test_live_blocks += p != NULL;
	return p;
}

void *calloc(size_t n, size_t size)
{
	void *p = test_alloc_fails() ? NULL : __libc_calloc(n, size);

	test_live_blocks += p != NULL;
	return p;
}

void *realloc(void *p, size_t n)
{
	void *q = test_alloc_fails() ? NULL : __libc_realloc(p, n);

	if (!p && q)
		test_live_blocks++;
	else if (p && !q && n == 0)
		test_live_blocks--;
	return q;
}

void free(void *p)
{
	test_live_blocks -= p != NULL;
	__libc_free(p);
}

/* Blocks in use. */
static inline size_t test_live_memory(void)
{
	return test_live_blocks;
}

/* Runs stmt with one allocation failing: the one after k that succeed. */
#define WITH_ALLOC_FAILING(k, stmt) \
	do { \
		test_fail_after = (k); \
		stmt; \
		test_fail_after = -1; \
	} while (0)

/*
 * expr (a constructor) returns NULL and leaves no memory behind, whichever
 * of its first n allocations fails.
 */
#define assert_null_without_memory(n, expr) \
	do { \
		size_t live_ = test_live_memory(); \
		for (long k_ = 0; k_ < (n); k_++) { \
			void *p_; \
			WITH_ALLOC_FAILING(k_, p_ = (expr)); \
			assert_null(p_); \
			assert_int_equal(test_live_memory(), live_); \
		} \
	} while (0)
#endif

#endif
