/* cli/acct_cli.h — what the accountant adds to the CLI: where presets and hardware
 * profiles live, and the energy line every compute command prints. */
#ifndef JOULE_ACCT_CLI_H
#define JOULE_ACCT_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "joule/energy.h"

/* The CPU profile the modeled meter uses when none is named. */
#define CLI_DEFAULT_CPU_PROFILE "amd-epyc-7763"

/* ':'-separated folders holding `kind` ("presets" or "hardware"): $JOULE_DATA_DIR/<kind>,
 * <folder of the joule binary>/../docs/<kind>, ./docs/<kind>. */
void cli_data_dirs(const char *kind, char *buf, size_t n);

/* Measurement around a command's work: meters chosen automatically (RAPL, perf, NVML, else
 * modeled:tdp with the profile named by $JOULE_HARDWARE or the default), or a constant power
 * from $JOULE_POWER_WATTS. Never fails the command: without meters `ok` stays false.
 * With $JOULE_ENERGY_CSV set, each measurement is also appended there as a CSV row
 * (header first when the file is new), labelled with `label`. */
typedef struct {
    bool ok;
    joule_energy meters;
    joule_energy_window window;
    char profile[64];
    const char *label;
} cli_energy;

void cli_energy_begin(cli_energy *ce, const char *label);
/* Stops the window and prints "energy: ..." (to stderr when to_stderr, e.g. under --json);
 * fills *out when not NULL. Closes the meters. */
void cli_energy_end(cli_energy *ce, uint64_t tokens, uint64_t queries, bool to_stderr, joule_energy_report *out);

/* Opens meters from explicit choices (the account/bench commands' flags). */
int cli_energy_open(joule_energy *e, const char *hardware, double power_watts, const char *meter, char *profile,
                    size_t profile_n);

/* The peak MFU is measured against: $JOULE_PEAK_GFLOPS when set, else a quick sgemm
 * measurement (about 0.3 s) with the current threads. In FLOP/s; prints nothing. Call it
 * outside any FLOP-counting window. */
double cli_peak_flops(void);
/* "MFU: ..." line: model (analytic) FLOPs/s over the peak, and the counted ones (HFU). */
void cli_print_mfu(FILE *f, double analytic, double counted, double seconds, double peak);

int cmd_account(int argc, char **argv);
int cmd_fit(int argc, char **argv);

#endif
