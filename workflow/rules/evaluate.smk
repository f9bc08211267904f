# Does the generated data help? The augmentation study and the generation metrics.


rule evaluate_generation:
    input:
        manifest="results/dataset/manifest.csv",
        samples=rules.sample.output.users,
        vae_eval=rules.evaluate_vae.output.metrics,
        judges=rules.evaluate_vae.output.judges,
        reconstructions=rules.evaluate_vae.output.reconstructions,
        low_data=expand(
            "results/lowdata/k{k}/samples/grid.png",
            k=config["evaluation"]["low_data_k"],
        ),
        teachers=list(evaluation_teachers().values()),
    output:
        generation="results/eval/generation.json",
        identity=report(
            "results/eval/identity.png",
            caption="../report/identity.rst",
            category="Evaluation",
        ),
        table=report(
            "results/eval/metrics.csv",
            caption="../report/metrics.rst",
            category="Evaluation",
        ),
        accuracy=report(
            "results/eval/accuracy_vs_ratio.png",
            caption="../report/accuracy_vs_ratio.rst",
            category="Evaluation",
        ),
        per_user=report(
            "results/eval/per_user_accuracy.png",
            caption="../report/per_user_accuracy.rst",
            category="Evaluation",
        ),
        confusion=report(
            "results/eval/confusion.png",
            caption="../report/confusion.rst",
            category="Evaluation",
        ),
        pairs=report(
            "results/eval/nearest_pairs.png",
            caption="../report/nearest_pairs.rst",
            category="Evaluation",
        ),
    log:
        "results/logs/evaluate_generation.log",
    benchmark:
        "results/benchmarks/evaluate_generation.tsv"
    conda:
        "../envs/mdgen.yaml"
    threads: 2
    resources:
        **config["resources"]["evaluate_generation"],
    params:
        samples=lambda wildcards, input: Path(input.samples[0]).parent,
        out_dir=lambda wildcards, output: Path(output.generation).parent,
        config=stage_config("evaluation"),
        low_data=lambda wildcards, input: " ".join(
            f"--low-data {k}={Path(grid).parent}"
            for k, grid in zip(config["evaluation"]["low_data_k"], input.low_data)
        ),
        teachers=" ".join(
            f"--teacher {name}={path}" for name, path in evaluation_teachers().items()
        ),
    shell:
        "python -m mdgen.stages.evaluate_generation --manifest {input.manifest} --samples {params.samples}"
        " --vae-eval {input.vae_eval} --judges {input.judges} --reconstructions {input.reconstructions} --out-dir {params.out_dir} --config {params.config:q} --threads {threads} {params.low_data} {params.teachers} > {log} 2>&1"
