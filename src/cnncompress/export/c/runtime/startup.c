/* Bare-metal start-up for the cnncompress test firmware (Cortex-M, QEMU mps2 boards): the vector
 * table, a reset handler that copies .data from flash, zeroes .bss, opens newlib's semihosting
 * handles and runs main (without the copy and the zeroing newlib's state is garbage and it hangs),
 * and a SysTick handler counting timer wraps for the instruction count. */
#include <stdint.h>
#include <stdlib.h>

extern uint32_t __data_load__[], __data_start__[], __data_end__[], __bss_start__[], __bss_end__[];
extern uint32_t __StackTop[];
extern void initialise_monitor_handles(void);
extern int main(void);

void Reset_Handler(void);
void Fault_Handler(void);
void SysTick_Handler(void);

volatile uint32_t systick_wraps;

void Reset_Handler(void)
{
    uint32_t *src = __data_load__, *dst = __data_start__;
    while (dst < __data_end__) {
        *dst++ = *src++;
    }
    for (dst = __bss_start__; dst < __bss_end__; ++dst) {
        *dst = 0;
    }
    initialise_monitor_handles();
    exit(main());
}

void Fault_Handler(void)
{
    exit(99); /* a fault (bad access, undefined instruction) ends the run with a recognisable status */
}

void SysTick_Handler(void)
{
    ++systick_wraps;
}

__attribute__((section(".vectors"), used)) static void (*const vectors[16])(void) = {
    (void (*)(void))__StackTop, Reset_Handler, Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler,
    Fault_Handler, 0, 0, 0, 0, Fault_Handler, Fault_Handler, 0, Fault_Handler, SysTick_Handler,
};
