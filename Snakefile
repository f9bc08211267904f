# mdgen: person-conditional generation of micro-Doppler spectrograms.
# raw spectrograms → validated data set → VA-VAE → latents → LightningDiT → samples.
# Run: snakemake --cores all   (see README.md)

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/teacher.smk"
include: "workflow/rules/vae.smk"
include: "workflow/rules/latents.smk"
include: "workflow/rules/dit.smk"
include: "workflow/rules/evaluate.smk"


rule all:
    default_target: True
    input:
        rules.validate_dataset.output,
        rules.finetune_vae.output,
        rules.evaluate_vae.output,
        rules.extract_latents.output,
        rules.train_dit.output,
        rules.sample.output,
        rules.evaluate_generation.output,
