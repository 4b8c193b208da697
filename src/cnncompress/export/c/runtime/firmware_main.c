/* cnncompress test firmware: inference on @COUNT@ embedded images; outputs, the SysTick ticks of
 * inference and of a calibration loop, and the stack high-water mark go out over semihosting. */
#include <stdint.h>
#include <stdio.h>

#include "model.h"

#define IMAGES @COUNT@
#define PAINT @PAINT@u
static const int8_t images[IMAGES][CNNC_INPUT_SIZE] = {
@IMAGES@
};
static int8_t outputs[IMAGES][CNNC_OUTPUT_SIZE];
extern uint32_t __stack_limit[], __StackTop[];
extern volatile uint32_t systick_wraps;

#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)

/* SysTick ticks since it started (under QEMU -icount, a fixed number of instructions per tick). */
static uint64_t ticks(void)
{
    uint32_t wraps, value;
    do {
        wraps = systick_wraps;
        value = SYST_CVR;
    } while (wraps != systick_wraps);
    return (uint64_t)wraps * 0x1000000u + (0xFFFFFFu - value);
}

static void print_ticks(const char *label, uint64_t count)
{
    printf("%s %lu %lu\n", label, (unsigned long)(count >> 32), (unsigned long)(count & 0xFFFFFFFFu));
}

int main(void)
{
    uint32_t status = 0, *word, loops = @LOOPS@u;
    uint64_t start;
    int i, k;
    SYST_RVR = 0xFFFFFFu;
    SYST_CVR = 0u;
    SYST_CSR = 7u; /* processor clock, interrupt on wrap, enabled */
    while (SYST_CVR == 0u) {
        /* the first tick loads the reload value: count from there */
    }
    start = ticks();
    __asm__ volatile("1: subs %0, %0, #1\n\tbne 1b" : "+r"(loops) : : "cc"); /* two instructions a loop */
    print_ticks("calibration", ticks() - start);
    for (word = __stack_limit; (uintptr_t)word < (uintptr_t)&status - 256; ++word) {
        *word = PAINT; /* paint the free stack: inference overwrites what it uses */
    }
    start = ticks();
    for (i = 0; i < IMAGES; ++i) {
        status |= (uint32_t)cnnc_run(images[i], outputs[i]);
    }
    start = ticks() - start;
    for (word = __stack_limit; *word == PAINT; ++word) {
    }
    print_ticks("inference", start);
    printf("stack %lu\n", (unsigned long)((uintptr_t)__StackTop - (uintptr_t)word));
    for (i = 0; i < IMAGES; ++i) {
        printf("out ");
        for (k = 0; k < CNNC_OUTPUT_SIZE; ++k) {
            printf("%02x", (unsigned)(uint8_t)outputs[i][k]);
        }
        printf("\n");
    }
    printf("status %lu\n", (unsigned long)status);
    return (int)status;
}
