/* Vector versions of the libm functions the kernels call in SIMD loops.
 *
 * The kernels are built without -ffast-math: it lets the compiler assume there are no
 * infinities or NaNs, which makes the softmax's -INFINITY start value (and any test for
 * NaN) undefined. glibc's math.h announces its vector expf (libmvec, AVX-512/AVX2/SSE,
 * errors of a few ulp, no errno) only under -ffast-math, so it is declared here; without
 * it every expf in the softmax and in SiLU is a scalar call.
 */
#ifndef LLMSERVE_VECTOR_MATH_H
#define LLMSERVE_VECTOR_MATH_H

#include <math.h>

#if defined(__x86_64__) && defined(__GLIBC__) && defined(_OPENMP) && !defined(__FAST_MATH__)
#pragma omp declare simd notinbranch
float expf(float);
#endif

#endif
