"""Pack the newest training state of an experiment into one small file, unpack it to resume from it, or carry it
over to a changed network.

Examples::

    python -m sdnet_plugin.tools.pack_training_state pack experiments/SDNet_base_synthetic \\
        weights/resume/training_state.pth
    python -m sdnet_plugin.tools.pack_training_state unpack weights/resume/training_state.pth \\
        experiments/SDNet_base_synthetic
    python sdnet_plugin/train.py -opt options/train_sdnet_weights.yml --auto_resume
    python -m sdnet_plugin.tools.pack_training_state carry experiments/SDNet_light_camera \\
        experiments/SDNet_light_camera_v2 -opt options/train_sdnet_weights.yml

``pack`` keeps everything ``--auto_resume`` needs (iteration, epoch, optimizer and scheduler states, network and EMA
weights) in float32 when it fits ``--max-mb``, else the EMA copy in float16, else also the Adam moments in bfloat16
(see ``sdnet_plugin.train.pack_training_state``). ``unpack`` writes ``training_states/<iter>.state`` and
``models/net_g_<iter>.pth`` back. ``carry`` continues a run with the network of an option file's ``network_g`` (for
example a preset version without some blocks): parameters are matched by name, and the iteration, schedule, Adam
moments of the kept parameters and compute counters go on (see ``sdnet_plugin.train.carry_over_training_state``);
train the new folder with ``--auto_resume`` and ``name`` set to it. ``scripts/pack_training_state.py`` takes the
same arguments.
"""
import argparse
import sys

import yaml

from sdnet_plugin.train import carry_over_training_state, pack_training_state, unpack_training_state

__all__ = ['main']


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    commands = parser.add_subparsers(dest='command', required=True)
    pack = commands.add_parser('pack', help='experiment folder -> one packed file')
    pack.add_argument('experiment', help='experiments/<name>')
    pack.add_argument('out', help='packed file to write')
    pack.add_argument('--max-mb', type=float, default=25.0, help='size limit in MB (default 25)')
    unpack = commands.add_parser('unpack', help='packed file -> experiment folder')
    unpack.add_argument('packed', help='packed file')
    unpack.add_argument('experiment', help='experiments/<name> to resume')
    carry = commands.add_parser('carry', help='experiment folder -> new experiment folder for a changed network')
    carry.add_argument('experiment', help='experiments/<name> of the run so far')
    carry.add_argument('out', help='experiments/<new name> to resume')
    carry.add_argument('-opt', required=True, help='option file whose network_g is the new network')
    args = parser.parse_args(argv)
    try:
        if args.command == 'pack':
            info = pack_training_state(args.experiment, args.out, args.max_mb)
            print(f'iteration {info["iter"]} packed into {args.out}: {info["bytes"] / 1e6:.1f} MB '
                  f'({info["precision"]})')
        elif args.command == 'unpack':
            current_iter = unpack_training_state(args.packed, args.experiment)
            print(f'iteration {current_iter} unpacked into {args.experiment}; resume with --auto_resume')
        else:
            with open(args.opt) as f:
                network_opt = (yaml.safe_load(f) or {}).get('network_g')
            if not isinstance(network_opt, dict):
                raise ValueError(f'{args.opt} has no network_g section')
            info = carry_over_training_state(args.experiment, args.out, network_opt)
            print(f'iteration {info["iter"]} carried over into {args.out}: {len(info["kept"])} tensors kept, '
                  f'{len(info["dropped"])} dropped, {len(info["new"])} new; resume with --auto_resume')
    except (FileNotFoundError, ValueError, OSError, yaml.YAMLError) as error:
        sys.exit(f'error: {error}')


if __name__ == '__main__':
    main()
