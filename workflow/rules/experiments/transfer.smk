# Transfer table: every trait vector on every labelled prompt set vs length-matched controls,
# beside surface baselines. Paths and targets come from traitscope.experiments.transfer.
from traitscope.experiments import transfer as transfer_plugin
from traitscope.experiments.transfer.settings import TransferSettings

TRANSFER = config["experiments"]["transfer"]
get_transfer_targets = lambda: transfer_plugin.targets(TRANSFER)


if is_enabled("transfer"):
    EXPERIMENT_TARGETS.append(get_transfer_targets)

    rule transfer_table:
        input:
            **transfer_plugin.analysis_inputs(TRANSFER, config),
        output:
            json=get_transfer_targets()[0],
            png=report(
                get_transfer_targets()[1],
                caption="../../report/transfer.rst",
                category="Trait vectors",
            ),
        log:
            "results/logs/transfer_table.log",
        conda:
            "../../../envs/traitscope.yaml"
        threads: 1
        resources:
            mem_mb=8000,
        params:
            inputs=lambda wildcards, input: transfer_plugin.analysis_args(
                TRANSFER, config, dict(input.items())
            ),
            bow=lambda wildcards, input: input.bow,
            settings=settings_param(TransferSettings, TRANSFER),
        shell:
            "traitscope transfer-table {params.inputs} --bag-of-words {params.bow} "
            "--out {output.json} --png {output.png} --settings {params.settings:q} 2> {log}"
