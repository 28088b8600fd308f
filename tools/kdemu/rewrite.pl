#!/usr/bin/perl
# Turns a CUDA source into C++ for the emulator (tools/kdemu/emu.h): usage rewrite.pl IN OUT.
#   kernel<<<grid, block[, smem[, stream]]>>>(args)  ->  (::emu::Launch("kernel", grid, ...) % kernel)(args)
#   __shared__ T name[dims];                          ->  per-block storage from a static SharedSite
#   extern __shared__ [__align__(n)] T name[];        ->  T* name = the block's dynamic shared memory
# A #line directive keeps compiler messages pointing at the original file.
use strict;
use warnings;

my ($in, $out) = @ARGV;
open(my $fh, '<', $in) or die "rewrite.pl: cannot read $in: $!\n";
local $/;
my $src = <$fh>;
close($fh);

$src =~ s{([A-Za-z_][\w:]*(?:<[^<>;(){}]*>)?)\s*<<<(.*?)>>>\s*\(}
         {(::emu::Launch("$1", $2) % $1)(}gs;
$src =~ s{extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?([\w: ]+?)\s+(\w+)\s*\[\s*\]\s*;}
         {$1* $2 = ::emu::dynamic_shared<$1>();}g;
$src =~ s{__shared__\s+(?:__align__\(\d+\)\s+)?([\w:<>, ]+?)\s+(\w+)((?:\s*\[[^\]]+\])*)\s*;}
         {"static ::emu::SharedSite kd_emu_site_$2; " .
          ($3 eq '' ? "$1& $2" : "$1 (&$2)$3") . " = *kd_emu_site_$2.get<$1$3>();"}ge;
die "rewrite.pl: $in still contains <<< or __shared__ after rewriting\n"
  if $src =~ /<<<|__shared__/;

open(my $oh, '>', "$out.tmp") or die "rewrite.pl: cannot write $out: $!\n";
print $oh "#line 1 \"$in\"\n", $src;
close($oh);
rename("$out.tmp", $out) or die "rewrite.pl: cannot rename to $out: $!\n";
